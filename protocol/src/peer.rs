//! Node-to-node frames: what cluster nodes say to each other over their links.
//!
//! A link is a TCP connection from one node's link thread to another node's cluster address.
//! It uses the client protocol's framing (`len`, `type`, a 4-byte field, body; see
//! [`codec`](crate::encode)) with its own frame types, all in `0x60..=0x6F`: a range the client
//! protocol never assigns, so a node that dials a client port by mistake (or a client that
//! reaches a cluster port) is told `UNKNOWN_FRAME` instead of being misread. The 4-byte field
//! after the type is 0 on node links and ignored by receivers.
//!
//! ```text
//!  dialer                                   acceptor
//!    | -- PEER_HELLO{version, node, membership} -> |  version, known id, same member list?
//!    | <- PEER_WELCOME{version, node, membership}  |  yes: the link is up
//!    | <- PEER_REFUSE{reason, message} ----------- |  no: both log why; the acceptor closes
//!    | -- PEER_PING{nonce} ----------------------> |
//!    | <- PEER_PONG{nonce} ----------------------- |
//!    | -- FORWARD / FORWARD_REPLY / PUSH_BATCH --> |  payloads flow dialer → acceptor only
//!    | -- PEER_READ / PEER_READ_REPLY ----------> |  (each node answers on links it dialed)
//!    | -- PRESENCE_WATCH / _UNWATCH / _CHANGES -> |
//! ```
//!
//! On encrypted clusters a Noise IK handshake (`NOISE.md` section 6) runs first, and these
//! frames travel inside its records; the frames are the same either way.
//!
//! Payload frames carry client frames already encoded (`frame: bytes` is a whole client frame,
//! length prefix included), so a push is encoded once however many nodes and devices get it.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::{peek_len, HEADER_BYTES, LEN_BYTES};
use crate::frame::UserInfo;
use crate::wire::{wire_enum, wire_struct, Reader, Tail, Wire};
use crate::{Error, Presence};

/// The node-to-node protocol version, sent in `PEER_HELLO` and `PEER_WELCOME`.
pub const PEER_VERSION: u16 = 1;

/// The largest `len` of a node frame: a forwarded client frame at the client ceiling (1 MiB)
/// plus a `PUSH_BATCH` list of 65,535 user ids, with room to spare.
pub const PEER_MAX_FRAME_LEN: u32 = 2 << 20;

wire_enum! {
    /// Why an accepting node refused a `PEER_HELLO`.
    #[derive(Default)]
    pub enum RefuseReason {
        /// The dialer speaks another node-to-node protocol version.
        #[default]
        Version = 1,
        /// The dialer's node id is not in this node's member list (or is this node's own id).
        UnknownNode = 2,
        /// The dialer was started with a different member list (ids or addresses): the hashes
        /// differ. Every node must be given the same `--peer` list.
        Membership = 3,
        /// The first frame was not a `PEER_HELLO`, or did not decode, or one end encrypts its
        /// links and the other does not.
        Protocol = 4,
        /// The dialer proved (in the Noise handshake) a static key that is not the key this
        /// node's member list gives for the node its `PEER_HELLO` names.
        Key = 5,
    }
}

impl RefuseReason {
    /// The name used in logs and in the `reason` label of metrics.
    pub fn name(self) -> &'static str {
        match self {
            RefuseReason::Version => "version",
            RefuseReason::UnknownNode => "unknown_node",
            RefuseReason::Membership => "membership",
            RefuseReason::Protocol => "protocol",
            RefuseReason::Key => "key",
        }
    }
}

wire_enum! {
    /// What the forwarding node already checked about the users a `FORWARD`ed request names
    /// (the peer of `OPEN_DIRECT`, the members of `CREATE_GROUP` and `ADD_MEMBERS`, the user of
    /// `CONTACT_ADD`): their homes are other nodes than the owner's, so the owner cannot look
    /// them up and takes the origin's word (PROTOCOL.md section 13).
    #[derive(Default)]
    pub enum UsersChecked {
        /// Nothing checked: the receiving node looks the users up itself (they are its own).
        #[default]
        No = 0,
        /// Every user the request names exists.
        AllExist = 1,
        /// At least one of them does not exist: answer `UNKNOWN_USER` where the check is.
        SomeMissing = 2,
        /// Media, not users: on a `SEND` of kind MEDIA, the origin (the sender's home, where
        /// the sender's uploads live) checked that the sender may read the media the body
        /// names and holds its bytes; the owner records the origin as the node holding them.
        MediaHeld = 3,
    }
}

wire_struct! {
    /// A client connection anywhere in the cluster: the node (its index in the member list,
    /// sorted by node id, which every node agrees on because the membership hashes match), and
    /// the connection's shard, slab slot and slot generation on that node.
    pub struct Origin {
        pub node: u16,
        pub shard: u16,
        pub slot: u32,
        pub gen: u32,
    }
}

wire_struct! {
    /// One presence change of a user, numbered by its home node's directory in the order the
    /// user's changes happened there (`PRESENCE_CHANGES`).
    pub struct PresenceChange {
        pub seq: u64,
        pub presence: Presence,
    }
}

/// Declares every node frame: a body struct per frame, the [`PeerFrame`] enum and its codec glue.
macro_rules! peer_frames {
    ($( $(#[$meta:meta])* $name:ident = $code:literal { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? } )*) => {
        $(
            wire_struct! { $(#[$meta])* pub struct $name { $($(#[$fmeta])* pub $field: $ty),* } }
        )*

        /// One node-to-node frame of any type.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum PeerFrame { $($name($name)),* }

        $(
            impl From<$name> for PeerFrame {
                fn from(f: $name) -> Self { PeerFrame::$name(f) }
            }
        )*

        impl PeerFrame {
            /// The type code of every node frame, in code order.
            pub const CODES: &'static [(u8, &'static str)] = &[$(($code, stringify!($name))),*];

            pub fn code(&self) -> u8 {
                match self { $(PeerFrame::$name(_) => $code),* }
            }

            /// This frame's Rust name, e.g. `PushBatch`; PROTOCOL.md spells it `PUSH_BATCH`.
            pub fn name(&self) -> &'static str {
                match self { $(PeerFrame::$name(_) => stringify!($name)),* }
            }

            fn body_size(&self) -> usize {
                match self { $(PeerFrame::$name(f) => f.size()),* }
            }

            fn put_body(&self, buf: &mut BytesMut) {
                match self { $(PeerFrame::$name(f) => f.put(buf)),* }
            }

            /// Decodes a body of type `code`; trailing bytes are ignored, as in client frames.
            fn decode_body(code: u8, body: Bytes) -> Result<PeerFrame, Error> {
                let mut r = Reader::new(body);
                match code {
                    $($code => Ok(PeerFrame::$name(<$name as Wire>::get(&mut r, stringify!($name))?)),)*
                    other => Err(Error::UnknownFrameType(other)),
                }
            }
        }
    };
}

peer_frames! {
    // ---- Handshake and liveness ----
    /// The dialer's first frame. `membership`: the hash of the cluster's member list as this
    /// node was configured (ids and addresses of every node).
    PeerHello = 0x60 { version: u16, node: String, membership: u64 }
    /// The acceptor agrees: same version, known id, same member list. `node` is the
    /// acceptor's own id, which the dialer checks against the node it meant to reach.
    PeerWelcome = 0x61 { version: u16, node: String, membership: u64 }
    /// The acceptor refuses and closes. `message` says what to change, for the dialer's log.
    PeerRefuse = 0x62 { reason: RefuseReason, message: String }
    /// Heartbeat from the dialer; the acceptor answers at once.
    PeerPing = 0x63 { nonce: u64 }
    PeerPong = 0x64 { nonce: u64 }

    // ---- Payloads (dialer → acceptor) ----
    /// A client request for a thread the receiving node owns. `lane`: the key that chose the
    /// link (the thread id). `request_id`, `user`, `device`: the client's request id and the
    /// authenticated caller. `frame`: the client's request frame, encoded. `checked`: what the
    /// origin found about users homed on other nodes that the request names. `handles`
    /// (appended; absent when empty): the handles the origin knows of the users an
    /// `OPEN_DIRECT` names (the caller and the peer), which the owner stores with a direct
    /// thread it creates, since it cannot look up users of other nodes.
    Forward = 0x68 { lane: u64, origin: Origin, request_id: u32, user: u64, device: u32, frame: Bytes, checked: UsersChecked, handles: Tail<Vec<UserInfo>> }
    /// The answer to a `FORWARD`, for the connection `origin` names: a whole encoded client
    /// frame (the reply, with the client's request id).
    ForwardReply = 0x69 { origin: Origin, frame: Bytes }
    /// One push for every online device of `users` homed on the receiving node, except the
    /// connection `except`. `frame`: the push, encoded once. `notify` (a `MESSAGE_PUSH` only;
    /// absent when empty): the users of this node who have not muted the thread (checked by
    /// the thread's owner, where mute state lives) and should get a push notification of the
    /// message if none of their devices is online; the receiving node, their home, decides
    /// with its own directory and registrations.
    PushBatch = 0x6A { users: Vec<u64>, except: Option<Origin>, frame: Bytes, notify: Tail<Vec<u64>> }

    // ---- Cross-node reads (dialer → acceptor) ----
    /// A read of `user`'s part on the receiving node: the threads it owns that the user is in.
    /// `id`: chosen by the asking node, echoed in the reply. `frame`: a client `LIST_THREADS`
    /// or `SYNC` frame, encoded (request id 0), with that node's arguments.
    PeerRead = 0x6B { id: u64, user: u64, device: u32, frame: Bytes }
    /// The answer to a `PEER_READ`: `frame` is an encoded client frame (`THREAD_LIST`,
    /// `SYNC_BATCH` or `ERROR_REPLY`, request id 0).
    PeerReadReply = 0x6C { id: u64, frame: Bytes }

    // ---- Presence across nodes (dialer → acceptor) ----
    /// Connections of the sending node subscribe to `users`, homed on the receiving node: it
    /// sends their changes to the sender (`PRESENCE_CHANGES`), starting with their current
    /// state. `reset`: these (and the next frames without `reset`) are the sender's whole
    /// watch set, replacing what the receiver held for it (sent when a link comes up).
    PresenceWatch = 0x6D { reset: bool, users: Vec<u64> }
    /// No connection of the sending node subscribes to `users` any more.
    PresenceUnwatch = 0x6E { users: Vec<u64> }
    /// Presence of users homed on the sending node that the receiver watches: the round's
    /// changes, or current states (answering `PRESENCE_WATCH`, or when a link comes up).
    /// `epoch`: chosen by the sender at start; `seq` orders one user's changes within it.
    PresenceChanges = 0x6F { epoch: u64, changes: Vec<PresenceChange> }
}

impl PeerFrame {
    /// The bytes [`encode_peer`] appends for this frame.
    pub fn encoded_len(&self) -> usize {
        LEN_BYTES + HEADER_BYTES + self.body_size()
    }
}

/// Appends one node frame to `buf` (the 4-byte field after the type is 0), reserving once.
pub fn encode_peer(frame: &PeerFrame, buf: &mut BytesMut) {
    let body = frame.body_size();
    buf.reserve(LEN_BYTES + HEADER_BYTES + body);
    buf.put_u32((HEADER_BYTES + body) as u32);
    buf.put_u8(frame.code());
    buf.put_u32(0);
    frame.put_body(buf);
}

/// Takes whole node frames off the front of a growing buffer, like [`Decoder`](crate::Decoder):
/// the length is checked against [`PEER_MAX_FRAME_LEN`] before any of the body is buffered, and
/// `Ok(None)` means "need more bytes".
pub fn decode_peer(buf: &mut BytesMut) -> Result<Option<PeerFrame>, Error> {
    let Some(len) = peek_len(buf, PEER_MAX_FRAME_LEN)? else {
        return Ok(None);
    };
    let total = LEN_BYTES + len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(LEN_BYTES);
    let mut frame = buf.split_to(len as usize);
    let code = frame.get_u8();
    let _reserved = frame.get_u32();
    PeerFrame::decode_body(code, frame.freeze()).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Frame;

    fn samples() -> Vec<PeerFrame> {
        let origin = Origin {
            node: 2,
            shard: 1,
            slot: 77,
            gen: 3,
        };
        vec![
            PeerHello {
                version: PEER_VERSION,
                node: "n1".into(),
                membership: 0xfeed,
            }
            .into(),
            PeerRefuse {
                reason: RefuseReason::Membership,
                message: "different member list".into(),
            }
            .into(),
            PeerPing { nonce: 9 }.into(),
            Forward {
                lane: 5,
                origin: origin.clone(),
                request_id: 12,
                user: 17,
                device: 1,
                frame: Bytes::from_static(b"\0\0\0\x05\x05\0\0\0\x01"),
                checked: UsersChecked::AllExist,
                handles: Tail::some(vec![UserInfo {
                    id: 17,
                    handle: "alice".into(),
                }]),
            }
            .into(),
            Forward {
                lane: 6,
                origin: origin.clone(),
                request_id: 13,
                user: 17,
                device: 1,
                frame: Bytes::from_static(b"\0\0\0\x05\x05\0\0\0\x02"),
                checked: UsersChecked::No,
                handles: Tail(None),
            }
            .into(),
            PushBatch {
                users: vec![1, 2, 3],
                except: Some(origin),
                frame: Bytes::from_static(b"push"),
                notify: Tail::default(),
            }
            .into(),
            PushBatch {
                users: vec![4, 5],
                except: None,
                frame: Bytes::from_static(b"push"),
                notify: Tail::some(vec![5]),
            }
            .into(),
            PeerRead {
                id: 7,
                user: 17,
                device: 1,
                frame: Bytes::from_static(b"\0\0\0\x10\x16\0\0\0\0"),
            }
            .into(),
            PeerReadReply {
                id: 7,
                frame: Bytes::from_static(b"answer"),
            }
            .into(),
            PresenceWatch {
                reset: true,
                users: vec![4, 5],
            }
            .into(),
            PresenceUnwatch { users: vec![5] }.into(),
            PresenceChanges {
                epoch: 99,
                changes: vec![PresenceChange {
                    seq: 3,
                    presence: Presence {
                        user: 4,
                        online: true,
                        last_seen: 1_700_000_000_000_000,
                    },
                }],
            }
            .into(),
        ]
    }

    #[test]
    fn byte_by_byte_and_all_at_once_decode_the_same_frames() {
        let mut wire = BytesMut::new();
        for f in samples() {
            let before = wire.len();
            encode_peer(&f, &mut wire);
            assert_eq!(wire.len() - before, f.encoded_len(), "{}", f.name());
        }
        let mut got = Vec::new();
        let mut buf = BytesMut::new();
        for &b in &wire[..] {
            buf.extend_from_slice(&[b]);
            while let Some(f) = decode_peer(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, samples());
        assert!(buf.is_empty());
    }

    #[test]
    fn an_oversize_length_is_refused_from_the_prefix() {
        let mut buf = BytesMut::from(&(PEER_MAX_FRAME_LEN + 1).to_be_bytes()[..]);
        assert_eq!(
            decode_peer(&mut buf),
            Err(Error::FrameTooLarge {
                len: PEER_MAX_FRAME_LEN + 1,
                max: PEER_MAX_FRAME_LEN
            })
        );
    }

    #[test]
    fn node_codes_are_unassigned_in_the_client_protocol() {
        for (code, name) in PeerFrame::CODES {
            assert!((0x60..=0x6f).contains(code), "{name} 0x{code:02x}");
            assert!(
                !Frame::CODES.iter().any(|(c, _)| c == code),
                "{name} 0x{code:02x} is a client frame code"
            );
        }
        // A client HELLO on a cluster port is an unknown node frame, not a misread one.
        let mut hello = BytesMut::new();
        crate::encode(
            1,
            &crate::Hello {
                version: 1,
                client: "c".into(),
            }
            .into(),
            &mut hello,
        );
        assert_eq!(decode_peer(&mut hello), Err(Error::UnknownFrameType(0x01)));
    }
}
