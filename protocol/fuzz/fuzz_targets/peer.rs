//! Arbitrary bytes into the node-to-node frame decoder, delivered in pieces.
//!
//! The first input byte picks the piece size, the rest is the stream. Properties: no panic;
//! the buffer never grows past one maximal node frame; every decoded frame re-encodes to bytes
//! that decode to the same frame.

#![no_main]

use bytes::BytesMut;
use courier_protocol::peer::{decode_peer, encode_peer, PEER_MAX_FRAME_LEN};
use courier_protocol::LEN_BYTES;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(control).max(1);
    let bound = 2 * stream.len().max(LEN_BYTES + PEER_MAX_FRAME_LEN as usize);

    let mut buf = BytesMut::new();
    'feed: for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match decode_peer(&mut buf) {
                Ok(Some(frame)) => {
                    let mut again = BytesMut::new();
                    encode_peer(&frame, &mut again);
                    assert_eq!(decode_peer(&mut again), Ok(Some(frame)));
                    assert!(again.is_empty());
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
        assert!(buf.capacity() <= bound, "buffer grew to {}", buf.capacity());
    }
});
