//! Stored values. Each starts with a version byte so a later layout can be told apart; fields
//! use the protocol's primitive encodings ([`courier_protocol::wire`]).
//!
//! That reuse of the wire codec is deliberate and versioned. Layout `V1`: the version byte 1,
//! then the fields in declaration order, each as the protocol encodes it today: integers
//! big-endian at their width, `bool` one byte 0 or 1, `String` a u16 length and UTF-8, `Bytes`
//! a u32 length and the bytes, `MessageKind` and `ThreadKind` their one-byte protocol codes.
//! Fields appended later read as their defaults when absent (see [`PrivateState`]). A `System`
//! message's body is a `SystemEvent` in its wire encoding on purpose: the server hands stored
//! bodies to clients as they are.
//!
//! The disk format must not follow the protocol by accident: the test
//! `tests::stored_bytes_of_every_record_are_pinned` pins the exact bytes of every record, so a
//! change to one of these encodings in `courier-protocol` fails it. Then either keep the old
//! encoding here (records get their own) or write a `V2` layout and keep reading `V1`.

use bytes::{Bytes, BytesMut};
use courier_protocol::wire::{Reader, Wire};
use courier_protocol::{MessageKind, ReactionCount, ThreadKind};

use crate::store::Error;

const V1: u8 = 1;

/// Encodes and decodes one kind of stored value.
pub trait Record: Sized {
    const NAME: &'static str;
    fn put(&self, buf: &mut BytesMut);
    fn get(r: &mut Reader) -> Result<Self, courier_protocol::Error>;

    fn encode(&self) -> BytesMut {
        let mut buf = BytesMut::with_capacity(64);
        self.encode_into(&mut buf);
        buf
    }

    /// Encodes into `buf` (cleared first), reusing its capacity: no allocation per record
    /// once `buf` has grown to the largest record.
    fn encode_into(&self, buf: &mut BytesMut) {
        buf.clear();
        buf.extend_from_slice(&[V1]);
        self.put(buf);
    }

    fn decode(raw: &[u8]) -> Result<Self, Error> {
        let corrupt = || Error::CorruptValue { record: Self::NAME };
        let (&version, rest) = raw.split_first().ok_or_else(corrupt)?;
        if version != V1 {
            return Err(corrupt());
        }
        Self::get(&mut Reader::new(Bytes::copy_from_slice(rest))).map_err(|_| corrupt())
    }
}

macro_rules! record {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }

        impl Record for $name {
            const NAME: &'static str = stringify!($name);
            fn put(&self, buf: &mut BytesMut) {
                $(Wire::put(&self.$f, buf);)*
            }
            fn get(r: &mut Reader) -> Result<Self, courier_protocol::Error> {
                Ok(Self { $($f: Wire::get(r, stringify!($f))?),* })
            }
        }
    };
}

/// `messages`: one message (its thread and id are the key).
///
/// `reply_to`, `edited_at` and `reactions` were appended to the layout and are written only
/// when one of them is set, so a plain message keeps the original layout (and its size); a
/// value without them reads as 0, 0 and none. `deleted_for_some` was appended after them and
/// is written only when true (with the three before it); a value without it reads as false.
///
/// Layout `V2` (messages only) is `V1` with `seq` as the last 8 bytes, so the unread count
/// reads it without parsing the body ([`peek_seq`](Self::peek_seq)). Every stored message is
/// `V2` once [`Store::open`](super::Store::open) has migrated a store written before it; a `V1`
/// value still reads (its `seq` as 0).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageRecord {
    pub sender: u64,
    pub client_msg_id: u64,
    pub kind: MessageKind,
    pub recalled: bool,
    pub body: Bytes,
    /// The message of the same thread this one replies to, 0 for none.
    pub reply_to: u64,
    /// Clock value of the last edit (the EDITED system message's id), 0 if never edited.
    pub edited_at: u64,
    /// Members' reactions counted per reaction (each user's own is in `reactions`), bounded
    /// by `ChatConfig::max_reactions`, most frequent first.
    pub reactions: Vec<ReactionCount>,
    /// A member deleted it for themselves (DELETE_FOR_ME): notices about it (RECALLED, EDITED,
    /// REACTED) are pushed only to members whose `hidden` row for it is absent. Never reset.
    pub deleted_for_some: bool,
    /// How many countable messages (all but system ones) the thread holds up to and including
    /// this one: [`ThreadRecord::countable`] when it was appended. Never changes afterwards (a
    /// recall, edit or reaction rewrites the value with the same `seq`), so the countable
    /// messages between two ids are the difference of two `seq`s.
    pub seq: u64,
}

/// The version byte of a message with `seq` (see [`MessageRecord`]).
pub(crate) const MESSAGE_V2: u8 = 2;

impl MessageRecord {
    /// Whether the appended fields shown to clients (reply, edit, reactions) hold anything.
    pub fn has_meta(&self) -> bool {
        self.reply_to != 0 || self.edited_at != 0 || !self.reactions.is_empty()
    }
}

impl Record for MessageRecord {
    const NAME: &'static str = "MessageRecord";
    fn put(&self, buf: &mut BytesMut) {
        self.sender.put(buf);
        self.client_msg_id.put(buf);
        self.kind.put(buf);
        self.recalled.put(buf);
        self.body.put(buf);
        if self.has_meta() || self.deleted_for_some {
            self.reply_to.put(buf);
            self.edited_at.put(buf);
            self.reactions.put(buf);
        }
        if self.deleted_for_some {
            self.deleted_for_some.put(buf);
        }
    }
    fn get(r: &mut Reader) -> Result<Self, courier_protocol::Error> {
        let mut m = Self {
            sender: Wire::get(r, "sender")?,
            client_msg_id: Wire::get(r, "client_msg_id")?,
            kind: Wire::get(r, "kind")?,
            recalled: Wire::get(r, "recalled")?,
            body: Wire::get(r, "body")?,
            ..Self::default()
        };
        if r.remaining() > 0 {
            m.reply_to = Wire::get(r, "reply_to")?;
            m.edited_at = Wire::get(r, "edited_at")?;
            m.reactions = Wire::get(r, "reactions")?;
        }
        if r.remaining() > 0 {
            m.deleted_for_some = Wire::get(r, "deleted_for_some")?;
        }
        Ok(m)
    }

    fn encode_into(&self, buf: &mut BytesMut) {
        buf.clear();
        buf.extend_from_slice(&[MESSAGE_V2]);
        self.put(buf);
        self.seq.put(buf);
    }

    fn decode(raw: &[u8]) -> Result<Self, Error> {
        let corrupt = || Error::CorruptValue { record: Self::NAME };
        let (fields, seq) = match raw.split_first().ok_or_else(corrupt)? {
            (&V1, rest) => (rest, 0),
            (&MESSAGE_V2, rest) if rest.len() >= 8 => {
                let (fields, seq) = rest.split_at(rest.len() - 8);
                (
                    fields,
                    u64::from_be_bytes(seq.try_into().map_err(|_| corrupt())?),
                )
            }
            _ => return Err(corrupt()),
        };
        let mut m =
            Self::get(&mut Reader::new(Bytes::copy_from_slice(fields))).map_err(|_| corrupt())?;
        m.seq = seq;
        Ok(m)
    }
}

impl MessageRecord {
    /// Sender and kind of a stored message without decoding (or copying) its body.
    pub fn peek_sender_kind(raw: &[u8]) -> Result<(u64, MessageKind), Error> {
        let corrupt = Error::CorruptValue { record: Self::NAME };
        if raw.len() < 18 || !(raw[0] == V1 || raw[0] == MESSAGE_V2) {
            return Err(corrupt);
        }
        let sender = u64::from_be_bytes(
            raw[1..9]
                .try_into()
                .map_err(|_| Error::CorruptValue { record: Self::NAME })?,
        );
        let kind = MessageKind::from_code(raw[17]).ok_or(corrupt)?;
        Ok((sender, kind))
    }

    /// `seq` of a stored message without decoding anything else; `None` for a `V1` value
    /// (written before `seq` existed; none is left once the store was opened).
    pub fn peek_seq(raw: &[u8]) -> Result<Option<u64>, Error> {
        let corrupt = || Error::CorruptValue { record: Self::NAME };
        match raw.first() {
            Some(&V1) => Ok(None),
            Some(&MESSAGE_V2) if raw.len() >= 31 => {
                let seq: [u8; 8] = raw[raw.len() - 8..].try_into().map_err(|_| corrupt())?;
                Ok(Some(u64::from_be_bytes(seq)))
            }
            _ => Err(corrupt()),
        }
    }
}

/// `threads`: what every member shares, except the member list (in `members`).
///
/// `countable` was appended to the layout; a value written without it reads as 0 (the
/// migration at open writes it for every thread of an older store). `handles` was appended
/// after it and is written only when set, so a group keeps the layout before it; a value
/// without it reads as none. `hidden_upto` was appended after `handles` and is written only
/// when set (with `handles`, empty or not, before it); a value without it reads as 0.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ThreadRecord {
    pub kind: ThreadKind,
    pub name: String,
    pub created_by: u64,
    /// Newest message id, 0 when none.
    pub last_msg_id: u64,
    /// Clock value of the last change of any kind (message, receipt, membership): sync's
    /// "changed since".
    pub changed_at: u64,
    pub member_count: u32,
    /// Countable messages (all but system ones) ever appended: the newest message's `seq`.
    pub countable: u64,
    /// A direct thread's two handles, the smaller user id's first, stored when the thread is
    /// created: in a cluster one or both users may be homed on another node, whose users
    /// this node's store does not hold. Handles never change, so they stay true. Empty for
    /// groups and for direct threads created before it existed.
    pub handles: Vec<String>,
    /// The highest message id up to which some member hid the conversation
    /// (`SET_THREAD_STATE`), 0 if none did since this was kept: a notice about a message at or
    /// below it reads the members' private states to leave out those who hid it with the
    /// conversation. Internal, never sent.
    pub hidden_upto: u64,
}

impl Record for ThreadRecord {
    const NAME: &'static str = "ThreadRecord";
    fn put(&self, buf: &mut BytesMut) {
        self.kind.put(buf);
        self.name.put(buf);
        self.created_by.put(buf);
        self.last_msg_id.put(buf);
        self.changed_at.put(buf);
        self.member_count.put(buf);
        self.countable.put(buf);
        if !self.handles.is_empty() || self.hidden_upto != 0 {
            self.handles.put(buf);
        }
        if self.hidden_upto != 0 {
            self.hidden_upto.put(buf);
        }
    }
    fn get(r: &mut Reader) -> Result<Self, courier_protocol::Error> {
        let mut t = Self {
            kind: Wire::get(r, "kind")?,
            name: Wire::get(r, "name")?,
            created_by: Wire::get(r, "created_by")?,
            last_msg_id: Wire::get(r, "last_msg_id")?,
            changed_at: Wire::get(r, "changed_at")?,
            member_count: Wire::get(r, "member_count")?,
            ..Self::default()
        };
        if r.remaining() > 0 {
            t.countable = Wire::get(r, "countable")?;
        }
        if r.remaining() > 0 {
            t.handles = Wire::get(r, "handles")?;
        }
        if r.remaining() > 0 {
            t.hidden_upto = Wire::get(r, "hidden_upto")?;
        }
        Ok(t)
    }
}

/// `members`: a member's role and receipt cursors.
///
/// `own_floor` was appended to the layout, and is written only when set; a value without it
/// reads as 0.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberRecord {
    pub admin: bool,
    pub delivered: u64,
    pub read: u64,
    /// The member's own messages above `read` all have ids at or below this (0: there are
    /// none). A SEND moves its sender's `read` to the new message, so own messages above
    /// `read` exist only from before the member (re)joined, or from a store written before
    /// SEND moved the cursor: the unread count must look at the messages up to here one by
    /// one, and above it only at two `seq`s.
    pub own_floor: u64,
}

impl Record for MemberRecord {
    const NAME: &'static str = "MemberRecord";
    fn put(&self, buf: &mut BytesMut) {
        self.admin.put(buf);
        self.delivered.put(buf);
        self.read.put(buf);
        if self.own_floor != 0 {
            self.own_floor.put(buf);
        }
    }
    fn get(r: &mut Reader) -> Result<Self, courier_protocol::Error> {
        let mut m = Self {
            admin: Wire::get(r, "admin")?,
            delivered: Wire::get(r, "delivered")?,
            read: Wire::get(r, "read")?,
            ..Self::default()
        };
        if r.remaining() > 0 {
            m.own_floor = Wire::get(r, "own_floor")?;
        }
        Ok(m)
    }
}

/// How long a membership tombstone ([`PrivateState::left`]) is kept: a device whose sync
/// watermark is older than this does not learn of the removal from `SYNC` and syncs from 0.
pub const TOMBSTONE_RETENTION_US: u64 = 30 * 24 * 3600 * 1_000_000;

/// `memberships`: a user's membership of a thread and their private state of it; after the
/// user left or was removed, a tombstone (`left`) so their other devices learn it from sync.
///
/// `changed_at` and `left` were appended to the layout; a value written without them reads as
/// 0 and false.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrivateState {
    pub muted: bool,
    /// Deleted-for-me conversation: messages up to `hidden_upto` are gone from this user's
    /// view, and the thread stays out of their list until a newer message arrives.
    pub hidden: bool,
    pub hidden_upto: u64,
    pub label: String,
    /// Clock value of the last change of this membership (joined, private state set,
    /// delete-for-me, left): sync's "changed since" for what only this user sees.
    pub changed_at: u64,
    /// Tombstone: the user left or was removed at `changed_at` (the id of that system
    /// message). Dropped when the user rejoins, or after [`TOMBSTONE_RETENTION_US`].
    pub left: bool,
}

impl PrivateState {
    /// A tombstone past its retention at wall-clock time `now` (µs): treated as absent, and
    /// dropped by compaction.
    pub fn expired(&self, now: u64) -> bool {
        self.left && self.changed_at.saturating_add(TOMBSTONE_RETENTION_US) < now
    }
}

impl Record for PrivateState {
    const NAME: &'static str = "PrivateState";
    fn put(&self, buf: &mut BytesMut) {
        self.muted.put(buf);
        self.hidden.put(buf);
        self.hidden_upto.put(buf);
        self.label.put(buf);
        self.changed_at.put(buf);
        self.left.put(buf);
    }
    fn get(r: &mut Reader) -> Result<Self, courier_protocol::Error> {
        let mut p = Self {
            muted: Wire::get(r, "muted")?,
            hidden: Wire::get(r, "hidden")?,
            hidden_upto: Wire::get(r, "hidden_upto")?,
            label: Wire::get(r, "label")?,
            ..Self::default()
        };
        if r.remaining() > 0 {
            p.changed_at = Wire::get(r, "changed_at")?;
            p.left = Wire::get(r, "left")?;
        }
        Ok(p)
    }
}

record! {
    /// `users`.
    pub struct UserRecord {
        pub handle: String,
        /// PHC string of the argon2id hash.
        pub password_hash: String,
        pub created_at: u64,
    }
}

/// `tokens`: a session token's owner (keyed by the token's digest, never the token).
///
/// `last_used` was appended to the layout; a value written without it reads as used when it
/// was created.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenRecord {
    pub user: u64,
    pub device: u32,
    pub device_name: String,
    pub created_at: u64,
    /// Wall-clock microseconds of the latest LOGIN or RESUME with the token, kept up to date
    /// to within a day (`session::accounts`): a token idle for `--token-idle-days` expires.
    pub last_used: u64,
}

impl TokenRecord {
    /// Whether the token, idle for more than `idle_us`, has expired at `now` (µs).
    pub fn expired(&self, idle_us: u64, now: u64) -> bool {
        now.saturating_sub(self.last_used) > idle_us
    }
}

impl Record for TokenRecord {
    const NAME: &'static str = "TokenRecord";
    fn put(&self, buf: &mut BytesMut) {
        self.user.put(buf);
        self.device.put(buf);
        self.device_name.put(buf);
        self.created_at.put(buf);
        self.last_used.put(buf);
    }
    fn get(r: &mut Reader) -> Result<Self, courier_protocol::Error> {
        let mut t = Self {
            user: Wire::get(r, "user")?,
            device: Wire::get(r, "device")?,
            device_name: Wire::get(r, "device_name")?,
            created_at: Wire::get(r, "created_at")?,
            last_used: 0,
        };
        t.last_used = if r.remaining() > 0 {
            Wire::get(r, "last_used")?
        } else {
            t.created_at
        };
        Ok(t)
    }
}

record! {
    /// `media` under `m ++ media id`: a stored blob's header.
    pub struct MediaHeader {
        pub total_len: u64,
        pub mime: String,
        /// Who uploaded it first (every uploader has a `o` entry).
        pub uploader: u64,
        /// When it was last committed (µs): the garbage collector's grace period runs from here.
        pub committed_at: u64,
    }
}

/// One push registration of a device (`REGISTER_PUSH`), an element of [`PusherSet`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pusher {
    /// The device that registered it (its registrations go with its token).
    pub device: u32,
    pub app_id: String,
    pub pushkey: String,
    /// `apns`, `fcm`, `web`, … as the client said; for the gateway and the app.
    pub platform: String,
    pub lang: String,
    /// A JSON object (checked at registration) handed to the gateway as the device's `data`;
    /// empty for none.
    pub data: String,
    /// When it was (last) registered, wall-clock µs (the gateway's `pushkey_ts`, in seconds).
    pub registered_at: u64,
}

impl Wire for Pusher {
    fn put(&self, buf: &mut BytesMut) {
        self.device.put(buf);
        self.app_id.put(buf);
        self.pushkey.put(buf);
        self.platform.put(buf);
        self.lang.put(buf);
        self.data.put(buf);
        self.registered_at.put(buf);
    }
    fn get(r: &mut Reader, _field: &'static str) -> Result<Self, courier_protocol::Error> {
        Ok(Self {
            device: Wire::get(r, "device")?,
            app_id: Wire::get(r, "app_id")?,
            pushkey: Wire::get(r, "pushkey")?,
            platform: Wire::get(r, "platform")?,
            lang: Wire::get(r, "lang")?,
            data: Wire::get(r, "data")?,
            registered_at: Wire::get(r, "registered_at")?,
        })
    }
    fn size(&self) -> usize {
        self.device.size()
            + self.app_id.size()
            + self.pushkey.size()
            + self.platform.size()
            + self.lang.size()
            + self.data.size()
            + self.registered_at.size()
    }
}

record! {
    /// `pushers`: every push registration of one user, all devices (bounded per device and per
    /// user by `push::MAX_PER_DEVICE` / `push::MAX_PER_USER`): one point read tells the engine
    /// whether an offline member can be notified, and the notifier which keys to name.
    pub struct PusherSet {
        pub pushers: Vec<Pusher>,
    }
}

/// `push_outbox`: the one pending notification of a user (coalesced: a later message
/// overwrites the event and counts one more unread). An empty stored value means "none"
/// (written by a merge that settled the row; compaction removes it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutboxRow {
    /// The latest event: its thread, message id, sender and kind. The message id also names
    /// this version of the row: an outcome for an older version does not settle it.
    pub thread: u64,
    pub message: u64,
    pub sender: u64,
    pub kind: MessageKind,
    /// Messages coalesced into this notification since the last one delivered.
    pub unread: u32,
    /// When the first of them was queued, wall-clock µs (give up 24 h after it).
    pub first_queued: u64,
    /// Failed deliveries so far, and when the next may be tried (wall-clock µs, 0: now).
    pub attempt: u32,
    pub next_attempt: u64,
}

impl Record for OutboxRow {
    const NAME: &'static str = "OutboxRow";
    fn put(&self, buf: &mut BytesMut) {
        self.thread.put(buf);
        self.message.put(buf);
        self.sender.put(buf);
        self.kind.put(buf);
        self.unread.put(buf);
        self.first_queued.put(buf);
        self.attempt.put(buf);
        self.next_attempt.put(buf);
    }
    fn get(r: &mut Reader) -> Result<Self, courier_protocol::Error> {
        Ok(Self {
            thread: Wire::get(r, "thread")?,
            message: Wire::get(r, "message")?,
            sender: Wire::get(r, "sender")?,
            kind: Wire::get(r, "kind")?,
            unread: Wire::get(r, "unread")?,
            first_queued: Wire::get(r, "first_queued")?,
            attempt: Wire::get(r, "attempt")?,
            next_attempt: Wire::get(r, "next_attempt")?,
        })
    }
}

impl OutboxRow {
    /// A stored value of `push_outbox`: `None` for the empty "settled" value.
    pub fn decode_pending(raw: &[u8]) -> Result<Option<Self>, Error> {
        if raw.is_empty() {
            return Ok(None);
        }
        Self::decode(raw).map(Some)
    }
}

/// A change to a user's `push_outbox` row, written as a RocksDB merge operand so that the
/// shards (new events) and the notifier (outcomes) never overwrite each other's change: the
/// merge applies them in commit order, and an outcome settles only the version it was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxOp {
    /// A message for the user (staged in the message's own batch).
    Event {
        thread: u64,
        message: u64,
        sender: u64,
        kind: MessageKind,
        at: u64,
    },
    /// The gateway took (or refused for good) the notification of version `message`: the row
    /// goes, unless a newer event overwrote it meanwhile.
    Settled { message: u64 },
    /// Delivery failed: try again at `next_attempt` (whatever the version: the gateway is the
    /// one failing).
    Retry { attempt: u32, next_attempt: u64 },
}

const OP_EVENT: u8 = 1;
const OP_SETTLED: u8 = 2;
const OP_RETRY: u8 = 3;

impl OutboxOp {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = BytesMut::with_capacity(40);
        buf.extend_from_slice(&[V1]);
        match *self {
            OutboxOp::Event {
                thread,
                message,
                sender,
                kind,
                at,
            } => {
                OP_EVENT.put(&mut buf);
                thread.put(&mut buf);
                message.put(&mut buf);
                sender.put(&mut buf);
                kind.put(&mut buf);
                at.put(&mut buf);
            }
            OutboxOp::Settled { message } => {
                OP_SETTLED.put(&mut buf);
                message.put(&mut buf);
            }
            OutboxOp::Retry {
                attempt,
                next_attempt,
            } => {
                OP_RETRY.put(&mut buf);
                attempt.put(&mut buf);
                next_attempt.put(&mut buf);
            }
        }
        buf.to_vec()
    }

    pub fn decode(raw: &[u8]) -> Result<Self, Error> {
        let corrupt = || Error::CorruptValue { record: "OutboxOp" };
        let (&version, rest) = raw.split_first().ok_or_else(corrupt)?;
        if version != V1 {
            return Err(corrupt());
        }
        let r = &mut Reader::new(Bytes::copy_from_slice(rest));
        let op = (|| -> Result<Self, courier_protocol::Error> {
            Ok(match u8::get(r, "op")? {
                OP_EVENT => OutboxOp::Event {
                    thread: Wire::get(r, "thread")?,
                    message: Wire::get(r, "message")?,
                    sender: Wire::get(r, "sender")?,
                    kind: Wire::get(r, "kind")?,
                    at: Wire::get(r, "at")?,
                },
                OP_SETTLED => OutboxOp::Settled {
                    message: Wire::get(r, "message")?,
                },
                OP_RETRY => OutboxOp::Retry {
                    attempt: Wire::get(r, "attempt")?,
                    next_attempt: Wire::get(r, "next_attempt")?,
                },
                code => {
                    return Err(courier_protocol::Error::InvalidValue {
                        field: "op",
                        value: u64::from(code),
                    })
                }
            })
        })();
        op.map_err(|_| corrupt())
    }

    /// The row after this change (`None`: no pending notification).
    pub fn apply(&self, row: Option<OutboxRow>) -> Option<OutboxRow> {
        match (*self, row) {
            (
                OutboxOp::Event {
                    thread,
                    message,
                    sender,
                    kind,
                    at,
                },
                row,
            ) => {
                let before = row.unwrap_or(OutboxRow {
                    first_queued: at,
                    ..OutboxRow::default()
                });
                Some(OutboxRow {
                    thread,
                    message,
                    sender,
                    kind,
                    unread: before.unread.saturating_add(1),
                    ..before
                })
            }
            (OutboxOp::Settled { message }, Some(row)) if row.message == message => None,
            (OutboxOp::Settled { .. }, row) => row,
            (
                OutboxOp::Retry {
                    attempt,
                    next_attempt,
                },
                Some(row),
            ) => Some(OutboxRow {
                attempt,
                next_attempt,
                ..row
            }),
            (OutboxOp::Retry { .. }, None) => None,
        }
    }
}

/// The merge operator of `push_outbox`: applies each [`OutboxOp`] in order to the stored row.
/// An operand that cannot be decoded is skipped (a corrupt change must not lose the row); an
/// unreadable stored row is treated as none.
pub fn merge_outbox(
    existing: Option<&[u8]>,
    operands: impl IntoIterator<Item = impl AsRef<[u8]>>,
) -> Vec<u8> {
    let mut row = existing.and_then(|v| OutboxRow::decode_pending(v).ok().flatten());
    for op in operands {
        if let Ok(op) = OutboxOp::decode(op.as_ref()) {
            row = op.apply(row);
        }
    }
    row.map_or_else(Vec::new, |r| r.encode().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let m = MessageRecord {
            sender: 7,
            client_msg_id: 9,
            kind: MessageKind::Media,
            recalled: false,
            body: Bytes::from_static(b"hi"),
            ..Default::default()
        };
        assert_eq!(MessageRecord::decode(&m.encode()).unwrap(), m);
        assert_eq!(
            MessageRecord::peek_sender_kind(&m.encode()).unwrap(),
            (7, MessageKind::Media)
        );
        let t = ThreadRecord {
            name: "g".into(),
            member_count: 3,
            ..Default::default()
        };
        assert_eq!(ThreadRecord::decode(&t.encode()).unwrap(), t);
        let p = PrivateState {
            muted: true,
            label: "l".into(),
            changed_at: 5,
            left: true,
            ..Default::default()
        };
        assert_eq!(PrivateState::decode(&p.encode()).unwrap(), p);
    }

    #[test]
    fn older_layouts_still_read() {
        // A V1 message (before `seq`) reads with seq 0; `peek_seq` tells it apart.
        let m = MessageRecord {
            sender: 7,
            body: Bytes::from_static(b"hi"),
            reply_to: 3,
            ..Default::default()
        };
        let mut v1 = BytesMut::from(&[V1][..]);
        m.put(&mut v1);
        assert_eq!(MessageRecord::decode(&v1).unwrap(), m);
        assert_eq!(MessageRecord::peek_seq(&v1).unwrap(), None);
        let v2 = MessageRecord { seq: 9, ..m }.encode();
        assert_eq!(MessageRecord::peek_seq(&v2).unwrap(), Some(9));
        assert!(MessageRecord::peek_seq(&[MESSAGE_V2, 0, 1]).is_err());
        // A thread record without `countable` reads it as 0.
        let t = ThreadRecord {
            name: "g".into(),
            countable: 4,
            ..Default::default()
        };
        let bytes = t.encode();
        let old = ThreadRecord::decode(&bytes[..bytes.len() - 8]).unwrap();
        assert_eq!(old, ThreadRecord { countable: 0, ..t });
    }

    /// Big-endian bytes of a u64, for spelling out expected layouts.
    fn be(v: u64) -> [u8; 8] {
        v.to_be_bytes()
    }

    /// Asserts that `record` is stored as exactly `expected` and reads back from it.
    fn pinned<R: Record + PartialEq + std::fmt::Debug>(record: R, expected: &[&[u8]]) {
        let expected: Vec<u8> = expected.concat();
        assert_eq!(
            &record.encode()[..],
            &expected[..],
            "the stored bytes of {} changed: a disk-format change needs a new version byte \
             and a reader for V1 (see the module docs)",
            R::NAME
        );
        assert_eq!(R::decode(&expected).unwrap(), record);
    }

    /// The disk format, spelled out byte by byte per record (module docs): a change to the
    /// protocol's encodings that would silently change what is on disk fails here.
    #[test]
    fn stored_bytes_of_every_record_are_pinned() {
        pinned(
            MessageRecord {
                sender: 0x0102_0304_0506_0708,
                client_msg_id: 9,
                kind: MessageKind::Media,
                recalled: true,
                body: Bytes::from_static(b"hi"),
                seq: 6,
                ..Default::default()
            },
            &[
                &[MESSAGE_V2],
                &be(0x0102_0304_0506_0708),
                &be(9),
                &[1], // MessageKind::Media
                &[1], // recalled
                &[0, 0, 0, 2, b'h', b'i'],
                &be(6), // seq, always last
            ],
        );
        pinned(
            MessageRecord {
                sender: 3,
                client_msg_id: 0,
                kind: MessageKind::Text,
                recalled: false,
                body: Bytes::from_static(b"x"),
                reply_to: 4,
                edited_at: 5,
                reactions: vec![ReactionCount {
                    reaction: "+1".into(),
                    count: 2,
                }],
                deleted_for_some: false,
                seq: 1,
            },
            &[
                &[MESSAGE_V2],
                &be(3),
                &be(0),
                &[0], // MessageKind::Text
                &[0], // not recalled
                &[0, 0, 0, 1, b'x'],
                &be(4),
                &be(5),
                &[0, 1], // one reaction count
                &[0, 2, b'+', b'1'],
                &[0, 0, 0, 2],
                &be(1),
            ],
        );
        pinned(
            MessageRecord {
                sender: 3,
                kind: MessageKind::Text,
                body: Bytes::from_static(b"x"),
                deleted_for_some: true,
                seq: 9,
                ..Default::default()
            },
            &[
                &[MESSAGE_V2],
                &be(3),
                &be(0),
                &[0], // MessageKind::Text
                &[0], // not recalled
                &[0, 0, 0, 1, b'x'],
                &be(0),  // reply_to
                &be(0),  // edited_at
                &[0, 0], // no reaction counts
                &[1],    // deleted_for_some
                &be(9),  // seq
            ],
        );
        let group = ThreadRecord {
            kind: ThreadKind::Group,
            name: "g1".into(),
            created_by: 7,
            last_msg_id: 1_000,
            changed_at: 1_001,
            member_count: 3,
            countable: 12,
            handles: Vec::new(),
            hidden_upto: 0,
        };
        let group_layout: &[&[u8]] = &[
            &[V1],
            &[2], // ThreadKind::Group
            &[0, 2, b'g', b'1'],
            &be(7),
            &be(1_000),
            &be(1_001),
            &[0, 0, 0, 3],
            &be(12),
        ];
        pinned(group.clone(), group_layout);
        // With a hide mark: an empty list of handles before it.
        pinned(
            ThreadRecord {
                hidden_upto: 990,
                ..group
            },
            &[group_layout, &[&[0, 0], &be(990)]].concat(),
        );
        pinned(
            ThreadRecord {
                kind: ThreadKind::Direct,
                name: String::new(),
                created_by: 7,
                last_msg_id: 0,
                changed_at: 9,
                member_count: 2,
                countable: 0,
                handles: vec!["al".into(), "b".into()],
                hidden_upto: 0,
            },
            &[
                &[V1],
                &[1], // ThreadKind::Direct
                &[0, 0],
                &be(7),
                &be(0),
                &be(9),
                &[0, 0, 0, 2],
                &be(0),  // countable
                &[0, 2], // two handles
                &[0, 2, b'a', b'l'],
                &[0, 1, b'b'],
            ],
        );
        pinned(
            MemberRecord {
                admin: true,
                delivered: 5,
                read: 4,
                own_floor: 0,
            },
            &[&[V1], &[1], &be(5), &be(4)],
        );
        pinned(
            MemberRecord {
                admin: false,
                delivered: 5,
                read: 4,
                own_floor: 3,
            },
            &[&[V1], &[0], &be(5), &be(4), &be(3)],
        );
        pinned(
            PrivateState {
                muted: true,
                hidden: false,
                hidden_upto: 8,
                label: "x".into(),
                changed_at: 9,
                left: true,
            },
            &[&[V1], &[1, 0], &be(8), &[0, 1, b'x'], &be(9), &[1]],
        );
        pinned(
            UserRecord {
                handle: "al".into(),
                password_hash: "$a".into(),
                created_at: 11,
            },
            &[&[V1], &[0, 2, b'a', b'l'], &[0, 2, b'$', b'a'], &be(11)],
        );
        pinned(
            TokenRecord {
                user: 12,
                device: 2,
                device_name: "d".into(),
                created_at: 13,
                last_used: 16,
            },
            &[
                &[V1],
                &be(12),
                &[0, 0, 0, 2],
                &[0, 1, b'd'],
                &be(13),
                &be(16),
            ],
        );
        pinned(
            MediaHeader {
                total_len: 14,
                mime: "a/b".into(),
                uploader: 15,
                committed_at: 16,
            },
            &[&[V1], &be(14), &[0, 3, b'a', b'/', b'b'], &be(15), &be(16)],
        );
    }

    #[test]
    fn a_membership_written_before_tombstones_reads_as_live_and_unchanged() {
        // Version byte, muted, hidden, hidden_upto, label "ab": the layout without the
        // appended `changed_at` and `left`.
        let mut old = vec![V1, 1, 0];
        old.extend_from_slice(&7u64.to_be_bytes());
        old.extend_from_slice(&[0, 2, b'a', b'b']);
        let p = PrivateState::decode(&old).unwrap();
        assert_eq!((p.muted, p.hidden_upto, p.label.as_str()), (true, 7, "ab"));
        assert_eq!((p.changed_at, p.left), (0, false));
    }

    #[test]
    fn a_token_written_before_last_used_reads_as_used_at_creation() {
        let mut old = vec![V1];
        old.extend_from_slice(&12u64.to_be_bytes());
        old.extend_from_slice(&[0, 0, 0, 2, 0, 1, b'd']);
        old.extend_from_slice(&13u64.to_be_bytes());
        let t = TokenRecord::decode(&old).unwrap();
        assert_eq!((t.user, t.created_at, t.last_used), (12, 13, 13));
        assert!(!t.expired(10, 23) && t.expired(10, 24));
    }

    #[test]
    fn only_tombstones_past_the_retention_expire() {
        let now = 100 * TOMBSTONE_RETENTION_US;
        let old = now - TOMBSTONE_RETENTION_US - 1;
        let tomb = |changed_at| PrivateState {
            left: true,
            changed_at,
            ..Default::default()
        };
        assert!(tomb(old).expired(now));
        assert!(!tomb(now - 1).expired(now));
        let live = PrivateState {
            changed_at: old,
            ..Default::default()
        };
        assert!(!live.expired(now));
    }

    #[test]
    fn corrupt_values_are_typed_errors() {
        assert!(matches!(
            MessageRecord::decode(&[]),
            Err(Error::CorruptValue { .. })
        ));
        assert!(matches!(
            MessageRecord::decode(&[2, 0]),
            Err(Error::CorruptValue { .. })
        ));
        assert!(matches!(
            UserRecord::decode(&[1, 0, 9]),
            Err(Error::CorruptValue { .. })
        ));
    }

    #[test]
    fn push_records_are_pinned() {
        pinned(
            OutboxRow {
                thread: 5,
                message: 6,
                sender: 7,
                kind: MessageKind::Text,
                unread: 3,
                first_queued: 8,
                attempt: 2,
                next_attempt: 9,
            },
            &[
                &[V1],
                &be(5),
                &be(6),
                &be(7),
                &[0],
                &3u32.to_be_bytes(),
                &be(8),
                &2u32.to_be_bytes(),
                &be(9),
            ],
        );
        pinned(
            PusherSet {
                pushers: vec![Pusher {
                    device: 2,
                    app_id: "a".into(),
                    pushkey: "k".into(),
                    platform: "fcm".into(),
                    lang: String::new(),
                    data: "{}".into(),
                    registered_at: 10,
                }],
            },
            &[
                &[V1],
                &[0, 1],
                &2u32.to_be_bytes(),
                &[0, 1, b'a'],
                &[0, 1, b'k'],
                &[0, 3, b'f', b'c', b'm'],
                &[0, 0],
                &[0, 2, b'{', b'}'],
                &be(10),
            ],
        );
        let op = OutboxOp::Settled { message: 6 };
        assert_eq!(op.encode(), [&[V1, OP_SETTLED][..], &be(6)].concat());
        assert_eq!(OutboxOp::decode(&op.encode()).unwrap(), op);
    }

    fn event(message: u64, at: u64) -> Vec<u8> {
        OutboxOp::Event {
            thread: 1,
            message,
            sender: 2,
            kind: MessageKind::Text,
            at,
        }
        .encode()
    }

    fn row(raw: &[u8]) -> Option<OutboxRow> {
        OutboxRow::decode_pending(raw).unwrap()
    }

    #[test]
    fn outbox_merges_coalesce_and_settle_only_the_version_sent() {
        // A burst: one row, the latest event, the count, the first time.
        let burst = merge_outbox(None, [event(10, 100), event(11, 101), event(12, 102)]);
        let r = row(&burst).unwrap();
        assert_eq!((r.message, r.unread, r.first_queued), (12, 3, 100));
        // The answer to the request for 11 arrives after 12 was merged: the row stays.
        let kept = merge_outbox(Some(&burst), [OutboxOp::Settled { message: 11 }.encode()]);
        assert_eq!(row(&kept), Some(r.clone()));
        // The answer for 12 settles it: an empty value, which reads as none.
        let settled = merge_outbox(Some(&burst), [OutboxOp::Settled { message: 12 }.encode()]);
        assert!(settled.is_empty() && row(&settled).is_none());
        // A new event after that starts over.
        let again = merge_outbox(Some(&settled), [event(13, 200)]);
        assert_eq!(
            row(&again).map(|r| (r.unread, r.first_queued)),
            Some((1, 200))
        );
        // A retry keeps the event and the count; a new event keeps the backoff.
        let retry = OutboxOp::Retry {
            attempt: 1,
            next_attempt: 5_000,
        };
        let backing_off = merge_outbox(Some(&burst), [retry.encode(), event(14, 103)]);
        let b = row(&backing_off).unwrap();
        assert_eq!(
            (b.message, b.unread, b.attempt, b.next_attempt),
            (14, 4, 1, 5_000)
        );
        // A retry for a row a connecting device deleted does not bring it back.
        assert!(merge_outbox(None, [retry.encode()]).is_empty());
        // A corrupt operand is skipped, not fatal.
        let skipped = merge_outbox(Some(&burst), [vec![1, 99]]);
        assert_eq!(row(&skipped), Some(r));
    }
}
