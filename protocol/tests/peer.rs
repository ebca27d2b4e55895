//! Node-to-node frames: every type survives encode → decode however the bytes are split, and
//! hostile bytes never panic the decoder nor make it buffer more than one maximal node frame.

use bytes::{Bytes, BytesMut};
use courier_protocol::peer::*;
use courier_protocol::{Tail, LEN_BYTES};
use proptest::prelude::*;

fn origin() -> impl Strategy<Value = Origin> {
    (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(|(node, shard, slot, gen)| {
        Origin {
            node,
            shard,
            slot,
            gen,
        }
    })
}

fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn refuse_reason() -> impl Strategy<Value = RefuseReason> {
    proptest::sample::select(RefuseReason::ALL)
}

fn any_peer_frame() -> impl Strategy<Value = PeerFrame> {
    prop_oneof![
        (any::<u16>(), ".{0,20}", any::<u64>()).prop_map(|(version, node, membership)| {
            PeerHello {
                version,
                node,
                membership,
            }
            .into()
        }),
        (any::<u16>(), ".{0,20}", any::<u64>()).prop_map(|(version, node, membership)| {
            PeerWelcome {
                version,
                node,
                membership,
            }
            .into()
        }),
        (refuse_reason(), ".{0,40}")
            .prop_map(|(reason, message)| PeerRefuse { reason, message }.into()),
        any::<u64>().prop_map(|nonce| PeerPing { nonce }.into()),
        any::<u64>().prop_map(|nonce| PeerPong { nonce }.into()),
        (
            any::<u64>(),
            origin(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            bytes(),
            proptest::sample::select(UsersChecked::ALL),
            proptest::option::of(proptest::collection::vec(
                (any::<u64>(), "[a-z0-9_]{0,32}"),
                0..3
            ))
        )
            .prop_map(
                |(lane, origin, request_id, user, device, frame, checked, handles)| Forward {
                    lane,
                    origin,
                    request_id,
                    user,
                    device,
                    frame,
                    checked,
                    handles: courier_protocol::Tail(handles.map(|users| {
                        users
                            .into_iter()
                            .map(|(id, handle)| courier_protocol::UserInfo { id, handle })
                            .collect()
                    }))
                }
                .into()
            ),
        (origin(), bytes()).prop_map(|(origin, frame)| ForwardReply { origin, frame }.into()),
        (
            proptest::collection::vec(any::<u64>(), 0..50),
            proptest::option::of(origin()),
            bytes(),
            proptest::option::of(proptest::collection::vec(any::<u64>(), 0..50)),
        )
            .prop_map(|(users, except, frame, notify)| PushBatch {
                users,
                except,
                frame,
                notify: Tail(notify),
            }
            .into()),
        (
            any::<bool>(),
            proptest::collection::vec(any::<u64>(), 0..50)
        )
            .prop_map(|(reset, users)| PresenceWatch { reset, users }.into()),
        proptest::collection::vec(any::<u64>(), 0..50)
            .prop_map(|users| PresenceUnwatch { users }.into()),
        (
            any::<u64>(),
            proptest::collection::vec(
                (any::<u64>(), any::<u64>(), any::<bool>(), any::<u64>()),
                0..20
            )
        )
            .prop_map(|(epoch, changes)| PresenceChanges {
                epoch,
                changes: changes
                    .into_iter()
                    .map(|(seq, user, online, last_seen)| PresenceChange {
                        seq,
                        presence: courier_protocol::Presence {
                            user,
                            online,
                            last_seen
                        }
                    })
                    .collect()
            }
            .into()),
    ]
}

proptest! {
    #[test]
    fn node_frames_round_trip_in_any_split(
        frames in proptest::collection::vec(any_peer_frame(), 1..8),
        chunk in 1usize..64,
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            encode_peer(f, &mut wire);
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(f) = decode_peer(&mut buf).expect("a valid stream") {
                got.push(f);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn garbage_never_panics_nor_buffers_more_than_one_frame(
        input in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut buf = BytesMut::from(&input[..]);
        while let Ok(Some(_)) = decode_peer(&mut buf) {}
        let bound = 2 * input.len().max(LEN_BYTES + PEER_MAX_FRAME_LEN as usize);
        prop_assert!(buf.capacity() <= bound, "capacity {}", buf.capacity());
    }
}
