//! Hostile input: random bytes and corrupted frames never panic, and never make the decoder
//! buffer more than one frame's worth of memory.

mod arb;

use std::time::{Duration, Instant};

use arb::any_envelope;
use bytes::BytesMut;
use courier_protocol::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Decodes until the input is exhausted, an error, or "need more", and checks that the buffer
/// never grew past what one maximal frame needs.
fn drain(decoder: Decoder, input: &[u8]) {
    let mut buf = BytesMut::from(input);
    let bound = input
        .len()
        .max(LEN_BYTES + decoder.max_frame_len() as usize)
        * 2;
    // Stop at the first error or "need more": either ends a connection's input here.
    while let Ok(Some(_)) = decoder.decode(&mut buf) {}
    assert!(
        buf.capacity() <= bound,
        "capacity {} > {bound}",
        buf.capacity()
    );
}

fn corrupt(rng: &mut StdRng, wire: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..4) {
        if wire.is_empty() {
            return;
        }
        let at = rng.random_range(0..wire.len());
        match rng.random_range(0..4) {
            0 => wire[at] = rng.random(),
            1 => wire[at] ^= 1 << rng.random_range(0..8),
            2 => wire.truncate(at),
            _ => wire.insert(at, rng.random()),
        }
    }
}

#[test]
fn two_gib_header_is_rejected_from_four_bytes() {
    let mut buf = BytesMut::from(&[0x80, 0, 0, 0][..]);
    let capacity = buf.capacity();
    let err = Decoder::default().decode(&mut buf).unwrap_err();
    assert_eq!(
        err,
        Error::FrameTooLarge {
            len: 1 << 31,
            max: DEFAULT_MAX_FRAME_LEN
        }
    );
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    assert_eq!(buf.len(), 4);
    assert_eq!(
        buf.capacity(),
        capacity,
        "nothing was reserved for the announced body"
    );
    // Even a decoder configured above the ceiling refuses it.
    assert!(Decoder::new(u32::MAX).decode(&mut buf).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..256)) {
        drain(Decoder::default(), &input);
        drain(Decoder::new(64), &input);
    }

    /// Random bytes behind a plausible header reach the body decoders, not just the framing.
    #[test]
    fn random_bodies_never_panic(code in any::<u8>(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut input = ((HEADER_BYTES + body.len()) as u32).to_be_bytes().to_vec();
        input.push(code);
        input.extend_from_slice(&[0, 0, 0, 1]);
        input.extend_from_slice(&body);
        let mut buf = BytesMut::from(&input[..]);
        match Decoder::default().decode(&mut buf) {
            Ok(Some(_)) => prop_assert!(buf.is_empty()),
            Ok(None) => prop_assert!(false, "a whole frame is never incomplete"),
            Err(e) => prop_assert!(e.code().closes_connection()),
        }
    }

    #[test]
    fn corrupted_frames_never_panic(envelope in any_envelope(), seed in any::<u64>()) {
        let mut wire = BytesMut::new();
        encode(envelope.request_id, &envelope.frame, &mut wire);
        let mut wire = wire.to_vec();
        corrupt(&mut StdRng::seed_from_u64(seed), &mut wire);
        drain(Decoder::default(), &wire);
    }
}

/// A longer randomized run than proptest's, bounded in time: the stand-in for the fuzz target
/// where nightly Rust is not available. Set `COURIER_GARBAGE_SECS` to run longer, and
/// `COURIER_GARBAGE_SEED` to replay a failure.
#[test]
fn randomized_garbage_for_a_few_seconds() {
    let secs = std::env::var("COURIER_GARBAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed = std::env::var("COURIER_GARBAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("randomized garbage: seed {seed} (COURIER_GARBAGE_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0u64;
    let mut input = Vec::new();
    while Instant::now() < deadline {
        for _ in 0..1000 {
            input.clear();
            input.resize(rng.random_range(0..512), 0);
            rng.fill(&mut input[..]);
            if rng.random_bool(0.5) {
                // A believable length and a known type code, so bodies get decoded.
                let len = (input.len().saturating_sub(LEN_BYTES)).max(HEADER_BYTES) as u32;
                let (code, _) = Frame::CODES[rng.random_range(0..Frame::CODES.len())];
                input.resize(input.len().max(LEN_BYTES + HEADER_BYTES), 0);
                input[..4].copy_from_slice(&len.to_be_bytes());
                input[4] = code;
            }
            drain(Decoder::default(), &input);
            runs += 1;
        }
    }
    eprintln!("randomized garbage: {runs} inputs");
}
