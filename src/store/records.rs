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

record! {
    /// `memberships`: a user's private state of a thread.
    pub struct PrivateState {
        pub muted: bool,
        /// Deleted-for-me conversation: messages up to `hidden_upto` are gone from this user's
        /// view, and the thread stays out of their list until a newer message arrives.
        pub hidden: bool,
        pub hidden_upto: u64,
        pub label: String,
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
