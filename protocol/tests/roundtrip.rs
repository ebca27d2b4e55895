//! Every frame type survives encode → decode unchanged, however the bytes are split on arrival.

mod arb;

use arb::{any_envelope, frame_strategies};
use bytes::BytesMut;
use courier_protocol::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn encode_all(envelopes: &[Envelope]) -> BytesMut {
    let mut buf = BytesMut::new();
    for e in envelopes {
        encode(e.request_id, &e.frame, &mut buf);
    }
    buf
}

/// Feeds `wire` to a decoder in the given chunk sizes (cycled), collecting every frame.
fn decode_in_chunks(wire: &[u8], chunks: &[usize]) -> Vec<Envelope> {
    let decoder = Decoder::new(MAX_FRAME_LEN);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    for &n in chunks.iter().cycle() {
        if pos == wire.len() {
            break;
        }
        let end = (pos + n.max(1)).min(wire.len());
        buf.extend_from_slice(&wire[pos..end]);
        pos = end;
        while let Some(e) = decoder.decode(&mut buf).expect("valid stream") {
            out.push(e);
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out
}

#[test]
fn every_frame_type_round_trips() {
    let strategies = frame_strategies();
    let names: Vec<&str> = strategies.iter().map(|(n, _)| *n).collect();
    let codes: Vec<&str> = Frame::CODES.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        names, codes,
        "tests/arb/mod.rs must list every frame, in code order"
    );

    for (name, strategy) in strategies {
        let mut runner = TestRunner::new(Config {
            cases: 128,
            ..Config::default()
        });
        let envelope = (any::<u32>(), strategy);
        runner
            .run(&envelope, |(request_id, frame)| {
                let mut buf = BytesMut::new();
                encode(request_id, &frame, &mut buf);
                let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                prop_assert_eq!(len + LEN_BYTES, buf.len(), "length prefix");
                prop_assert_eq!(buf[4], frame.code());
                let got = Decoder::new(MAX_FRAME_LEN).decode(&mut buf);
                prop_assert_eq!(got, Ok(Some(Envelope { request_id, frame })));
                prop_assert!(buf.is_empty());
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

proptest! {
    #[test]
    fn byte_by_byte_decodes_the_same_frames(envelopes in prop::collection::vec(any_envelope(), 1..8)) {
        let wire = encode_all(&envelopes);
        prop_assert_eq!(decode_in_chunks(&wire, &[1]), envelopes);
    }

    #[test]
    fn random_splits_decode_the_same_frames(
        envelopes in prop::collection::vec(any_envelope(), 1..8),
        chunks in prop::collection::vec(1usize..64, 1..16),
    ) {
        let wire = encode_all(&envelopes);
        prop_assert_eq!(decode_in_chunks(&wire, &chunks), envelopes);
    }

    /// A prefix of a valid frame is "need more bytes", never an error.
    #[test]
    fn every_prefix_is_incomplete(envelope in any_envelope(), cut in any::<prop::sample::Index>()) {
        let wire = encode_all(std::slice::from_ref(&envelope));
        let mut buf = BytesMut::from(&wire[..cut.index(wire.len())]);
        prop_assert_eq!(Decoder::new(MAX_FRAME_LEN).decode(&mut buf), Ok(None));
    }

    /// Forward compatibility: bytes appended to a body by a later version are ignored. A
    /// later version that appends a field after a `Tail` writes the tail (see `wire::Tail`).
    #[test]
    fn trailing_body_bytes_are_ignored(envelope in any_envelope(), extra in prop::collection::vec(any::<u8>(), 1..32)) {
        let envelope = with_tails_written(envelope);
        let wire = encode_all(std::slice::from_ref(&envelope));
        let mut grown = BytesMut::new();
        let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) + extra.len() as u32;
        grown.extend_from_slice(&len.to_be_bytes());
        grown.extend_from_slice(&wire[4..]);
        grown.extend_from_slice(&extra);
        prop_assert_eq!(Decoder::new(MAX_FRAME_LEN).decode(&mut grown), Ok(Some(envelope)));
        prop_assert!(grown.is_empty());
    }
}

/// `envelope` with every left-out [`Tail`] field present (as its default).
fn with_tails_written(mut envelope: Envelope) -> Envelope {
    match &mut envelope.frame {
        Frame::Sync(f) if f.vector.0.is_none() => f.vector = Tail::some(SyncVector::default()),
        Frame::SyncBatch(f) if f.vector.0.is_none() => {
            f.vector = Tail::some(BatchVector::default())
        }
        _ => {}
    }
    envelope
}
