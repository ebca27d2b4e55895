//! Stored values. Each starts with a version byte so a later layout can be told apart; fields
//! use the protocol's primitive encodings ([`courier_protocol::wire`]).

use bytes::{Bytes, BytesMut};
use courier_protocol::wire::{Reader, Wire};
use courier_protocol::{MessageKind, ThreadKind};

use crate::store::Error;

const V1: u8 = 1;

/// Encodes and decodes one kind of stored value.
pub trait Record: Sized {
    const NAME: &'static str;
    fn put(&self, buf: &mut BytesMut);
    fn get(r: &mut Reader) -> Result<Self, courier_protocol::Error>;

    fn encode(&self) -> BytesMut {
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&[V1]);
        self.put(&mut buf);
        buf
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

record! {
    /// `messages`: one message (its thread and id are the key).
    pub struct MessageRecord {
        pub sender: u64,
        pub client_msg_id: u64,
        pub kind: MessageKind,
        pub recalled: bool,
        pub body: Bytes,
    }
}

impl MessageRecord {
    /// Sender and kind of a stored message without decoding (or copying) its body: the unread
    /// count reads only these.
    pub fn peek_sender_kind(raw: &[u8]) -> Result<(u64, MessageKind), Error> {
        let corrupt = Error::CorruptValue { record: Self::NAME };
        if raw.len() < 18 || raw[0] != V1 {
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
}

record! {
    /// `threads`: what every member shares, except the member list (in `members`).
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
    }
}

record! {
    /// `members`: a member's role and receipt cursors.
    pub struct MemberRecord {
        pub admin: bool,
        pub delivered: u64,
        pub read: u64,
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

record! {
    /// `tokens`: a session token's owner (keyed by the token's digest, never the token).
    pub struct TokenRecord {
        pub user: u64,
        pub device: u32,
        pub device_name: String,
        pub created_at: u64,
    }
}

record! {
    /// `media` under offset `u64::MAX`: a committed media object's header.
    pub struct MediaHeader {
        pub total_len: u64,
        pub mime: String,
        pub uploader: u64,
    }
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
}
