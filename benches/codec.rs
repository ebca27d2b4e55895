//! Codec throughput: encoding and decoding a batch of frames, against the floor of copying the
//! same bytes into a `BytesMut` (what a read into the connection's input buffer costs anyway).
//!
//! Two frames: `SEND` with a 100-byte body (client → server, the hottest request) and
//! `MESSAGE_PUSH` of a 100-byte message (server → client, sent once per recipient device). Each
//! is measured twice, once reported in bytes per second and once in frames per second.
//!
//! Run: `cargo bench --bench codec`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use courier_protocol::{encode, Decoder, Frame, Message, MessageKind, MessagePush, Send};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Frames per iteration: a read from a busy socket holds many frames.
const BATCH: usize = 64;
const BODY: [u8; 100] = [b'x'; 100];

fn send_frame() -> Frame {
    Send {
        thread: 1_234_567,
        client_msg_id: 0x0123_4567_89ab_cdef,
        kind: MessageKind::Text,
        body: Bytes::from_static(&BODY),
        reply_to: 0,
    }
    .into()
}

fn push_frame() -> Frame {
    MessagePush {
        message: Message {
            thread: 1_234_567,
            id: 1_700_000_000_000_001,
            sender: 42,
            client_msg_id: 0x0123_4567_89ab_cdef,
            kind: MessageKind::Text,
            recalled: false,
            body: Bytes::from_static(&BODY),
        },
        reply_to: 0,
    }
    .into()
}

fn encode_batch(frame: &Frame, buf: &mut BytesMut) {
    buf.clear();
    for i in 0..BATCH {
        encode(i as u32 + 1, frame, buf);
    }
}

fn bench_frame(c: &mut Criterion, name: &str, frame: Frame) {
    let mut wire = BytesMut::new();
    encode_batch(&frame, &mut wire);
    let wire = wire.freeze();
    let decoder = Decoder::default();

    for (unit, throughput) in [
        ("bytes", Throughput::Bytes(wire.len() as u64)),
        ("frames", Throughput::Elements(BATCH as u64)),
    ] {
        let mut group = c.benchmark_group(format!("codec/{name}/{unit}"));
        group.throughput(throughput);
        group.measurement_time(Duration::from_secs(3));
        let mut buf = BytesMut::with_capacity(wire.len());

        group.bench_function("baseline_memcpy", |b| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(black_box(&wire));
                black_box(&buf);
            })
        });
        group.bench_function("encode", |b| {
            b.iter(|| {
                encode_batch(black_box(&frame), &mut buf);
                black_box(&buf);
            })
        });
        // Includes the copy into the input buffer, so it compares directly with the baseline.
        group.bench_function("decode", |b| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(black_box(&wire));
                while let Some(envelope) = decoder.decode(&mut buf).expect("valid frames") {
                    black_box(envelope);
                }
            })
        });
        group.finish();
    }
}

fn codec(c: &mut Criterion) {
    bench_frame(c, "send_100b", send_frame());
    bench_frame(c, "message_push_100b", push_frame());
}

criterion_group!(benches, codec);
criterion_main!(benches);
