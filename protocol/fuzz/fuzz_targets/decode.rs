//! Arbitrary bytes into the frame decoder, delivered in pieces.
//!
//! The first input byte picks the piece size and the decoder's limit, the rest is the stream.
//! Properties: no panic; the buffer never grows past one maximal frame; every decoded frame
//! re-encodes to bytes that decode to the same frame.

#![no_main]

use bytes::BytesMut;
use courier_protocol::{encode, Decoder, DEFAULT_MAX_FRAME_LEN, LEN_BYTES, MAX_FRAME_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(control & 0x7f).max(1);
    let decoder = if control & 0x80 == 0 {
        Decoder::new(DEFAULT_MAX_FRAME_LEN)
    } else {
        Decoder::new(MAX_FRAME_LEN)
    };
    let bound = 2 * stream.len().max(LEN_BYTES + decoder.max_frame_len() as usize);

    let mut buf = BytesMut::new();
    'feed: for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(envelope)) => {
                    let mut again = BytesMut::new();
                    encode(envelope.request_id, &envelope.frame, &mut again);
                    let back = Decoder::new(MAX_FRAME_LEN).decode(&mut again);
                    assert_eq!(back, Ok(Some(envelope)));
                    assert!(again.is_empty());
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
        assert!(buf.capacity() <= bound, "buffer grew to {}", buf.capacity());
    }
});
