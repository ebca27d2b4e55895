use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const LIMIT: usize = MAX_RECORD_LEN;

/// Two ends of one connection, keyed as a handshake would leave them.
fn pair() -> (Transport, Transport) {
    let a_to_b = [0x11; KEY_LEN];
    let b_to_a = [0x22; KEY_LEN];
    (
        Transport::new(&a_to_b, &b_to_a),
        Transport::new(&b_to_a, &a_to_b),
    )
}

/// Plaintexts of several sizes, including empty, one full record and one spanning records.
fn plaintexts() -> Vec<Vec<u8>> {
    [
        0,
        1,
        100,
        MAX_RECORD_PLAINTEXT,
        MAX_RECORD_PLAINTEXT + 1,
        150_000,
    ]
    .iter()
    .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
    .collect()
}

fn sealed(sender: &mut Transport, texts: &[Vec<u8>]) -> BytesMut {
    let mut wire = BytesMut::new();
    for text in texts {
        sender.seal(text, &mut wire).unwrap();
    }
    wire
}

#[test]
fn transport_state_fits_in_96_bytes() {
    // Two 32-byte keys and two u64 nonces: nothing else survives the handshake.
    assert_eq!(std::mem::size_of::<Transport>(), 80);
    assert!(std::mem::size_of::<Transport>() <= 96);
}

#[test]
fn records_round_trip_fed_byte_by_byte() {
    let (mut a, mut b) = pair();
    let texts = plaintexts();
    let wire = sealed(&mut a, &texts);
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    for &byte in wire.iter() {
        input.extend_from_slice(&[byte]);
        b.open_all(&mut input, LIMIT, &mut out).unwrap();
    }
    assert!(input.is_empty());
    assert_eq!(out, texts.concat());
}

#[test]
fn records_round_trip_in_random_splits() {
    let texts = plaintexts();
    let mut rng = StdRng::seed_from_u64(12);
    for _ in 0..50 {
        let (mut a, mut b) = pair();
        let wire = sealed(&mut a, &texts);
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let n = rng.random_range(1..=rest.len().min(70_000));
            input.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            b.open_all(&mut input, LIMIT, &mut out).unwrap();
        }
        assert!(input.is_empty());
        assert_eq!(out, texts.concat());
    }
}

#[test]
fn both_directions_are_independent() {
    let (mut a, mut b) = pair();
    let mut to_b = sealed(&mut a, &[b"ping".to_vec()]);
    let mut to_a = sealed(&mut b, &[b"pong".to_vec(), b"more".to_vec()]);
    let mut out = BytesMut::new();
    b.open_all(&mut to_b, LIMIT, &mut out).unwrap();
    assert_eq!(&out[..], b"ping");
    out.clear();
    a.open_all(&mut to_a, LIMIT, &mut out).unwrap();
    assert_eq!(&out[..], b"pongmore");
}

#[test]
fn a_tampered_record_is_rejected_and_yields_no_plaintext() {
    let (mut a, _) = pair();
    let wire = sealed(&mut a, &[b"transfer 100 to bob".to_vec()]);
    // Every byte of ciphertext and tag, each bit flipped in turn.
    for index in LEN_BYTES..wire.len() {
        for bit in 0..8 {
            let (_, mut b) = pair();
            let mut input = wire.clone();
            input[index] ^= 1 << bit;
            let mut out = BytesMut::from(&b"earlier "[..]);
            assert_eq!(
                b.open(&mut input, LIMIT, &mut out),
                Err(Error::RecordAuth),
                "byte {index} bit {bit}"
            );
            assert_eq!(
                &out[..],
                b"earlier ",
                "no plaintext of a forged record leaks out"
            );
        }
    }
}

#[test]
fn a_replayed_record_is_rejected() {
    let (mut a, mut b) = pair();
    let first = sealed(&mut a, &[b"send 1".to_vec()]);
    let mut input = first.clone();
    input.extend_from_slice(&first);
    let mut out = BytesMut::new();
    assert_eq!(b.open(&mut input, LIMIT, &mut out), Ok(Some(6)));
    assert_eq!(b.open(&mut input, LIMIT, &mut out), Err(Error::RecordAuth));
    assert_eq!(&out[..], b"send 1");
}

#[test]
fn reordered_or_dropped_records_are_rejected() {
    let (mut a, _) = pair();
    let first = sealed(&mut a, &[b"one".to_vec()]);
    let second = sealed(&mut a, &[b"two".to_vec()]);

    let (_, mut b) = pair();
    let mut input = second.clone();
    input.extend_from_slice(&first);
    let mut out = BytesMut::new();
    assert_eq!(b.open(&mut input, LIMIT, &mut out), Err(Error::RecordAuth));

    let (_, mut b) = pair();
    let mut only_second = second.clone();
    assert_eq!(
        b.open(&mut only_second, LIMIT, &mut out),
        Err(Error::RecordAuth)
    );
    assert!(out.is_empty());
}

#[test]
fn a_record_reflected_back_to_its_sender_is_rejected() {
    let (mut a, _) = pair();
    let mut wire = sealed(&mut a, &[b"hello".to_vec()]);
    let mut out = BytesMut::new();
    assert_eq!(a.open(&mut wire, LIMIT, &mut out), Err(Error::RecordAuth));
}

#[test]
fn an_oversize_length_is_refused_before_any_body_is_buffered() {
    let (_, mut b) = pair();
    // Only the prefix has arrived: 0x1001 = 4097 bytes announced, over a 4096 limit.
    let mut input = BytesMut::with_capacity(2);
    input.extend_from_slice(&[0x10, 0x01]);
    let mut out = BytesMut::new();
    assert_eq!(
        b.open(&mut input, 4096, &mut out),
        Err(Error::RecordTooLarge {
            len: 4097,
            max: 4096
        })
    );
    assert_eq!(input.capacity(), 2, "nothing reserved for the body");
    // A limit above what a u16 can say is clamped, so 0xffff is accepted as a length.
    let mut full = BytesMut::from(&[0xff, 0xff][..]);
    assert_eq!(b.open(&mut full, usize::MAX, &mut out), Ok(None));
    // Too short to hold the tag.
    let mut short = BytesMut::from(&[0x00, 0x0f][..]);
    assert_eq!(
        b.open(&mut short, LIMIT, &mut out),
        Err(Error::RecordTooShort { len: 15 })
    );
}

#[test]
fn a_partial_record_does_not_reserve_its_announced_length() {
    let (mut a, mut b) = pair();
    let wire = sealed(&mut a, &[vec![0x5a; 1000]]);
    let mut input = BytesMut::with_capacity(16);
    input.extend_from_slice(&wire[..10]);
    let mut out = BytesMut::new();
    assert_eq!(b.open(&mut input, LIMIT, &mut out), Ok(None));
    assert_eq!(input.capacity(), 16);
    assert!(out.is_empty());
}

#[test]
fn nonces_run_out_with_an_error_not_a_wrap() {
    let (mut a, mut b) = pair();
    a.send_nonce = u64::MAX - 1;
    b.recv_nonce = u64::MAX - 1;
    let mut wire = BytesMut::new();
    a.seal(b"last", &mut wire).unwrap();
    assert_eq!(
        a.seal(b"one too many", &mut wire),
        Err(Error::NonceExhausted)
    );
    let mut out = BytesMut::new();
    assert_eq!(b.open(&mut wire, LIMIT, &mut out), Ok(Some(4)));
    assert!(wire.is_empty(), "the refused seal wrote nothing");
    let mut again = BytesMut::from(&[0x00, 0x10][..]);
    again.extend_from_slice(&[0; 16]);
    assert_eq!(
        b.open(&mut again, LIMIT, &mut out),
        Err(Error::NonceExhausted)
    );
}

/// Counts this thread's heap allocations, to prove the steady state allocates nothing.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// `GlobalAlloc` contract; the counter is a const-initialised thread-local `Cell`, which never
// allocates (and `try_with` tolerates a thread being torn down). Exercised by
// `steady_state_seal_and_open_do_not_allocate` below, and by every test in this binary.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on as is.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`, as the caller guarantees.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as for `dealloc`, and `new` is the caller's valid new size.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static COUNTING: CountingAllocator = CountingAllocator;

#[test]
fn steady_state_seal_and_open_do_not_allocate() {
    let (mut a, mut b) = pair();
    let mut wire = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(4096);
    let text = [0x42u8; 100];
    let before = ALLOCATIONS.with(|n| n.get());
    for _ in 0..1000 {
        a.seal(&text, &mut wire).unwrap();
        assert_eq!(b.open(&mut wire, LIMIT, &mut out), Ok(Some(100)));
        assert!(wire.is_empty());
        out.clear();
    }
    assert_eq!(ALLOCATIONS.with(|n| n.get()), before);
}

/// This thread's time on a CPU (Linux `schedstat`), so a loaded machine does not inflate the
/// figure the way wall time does; `None` elsewhere.
fn thread_cpu_time() -> Option<std::time::Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = text.split_whitespace().next()?.parse().ok()?;
    Some(std::time::Duration::from_nanos(nanos))
}

/// Runs `round` `rounds` times; prints wall and CPU time per round.
fn time(label: &str, rounds: u32, mut round: impl FnMut()) {
    let (wall, cpu) = (std::time::Instant::now(), thread_cpu_time());
    for _ in 0..rounds {
        round();
    }
    let wall = wall.elapsed() / rounds;
    let cpu = cpu.zip(thread_cpu_time()).map(|(a, b)| (b - a) / rounds);
    println!("{label:<44} wall {wall:>9.1?}  cpu {cpu:>9.1?} per 100-byte record");
}

/// `cargo test -p courier-protocol --lib noise::record::tests::throughput -- --ignored --nocapture`
///
/// Seal + open of one 100-byte record, against two baselines: the plaintext path (copy the
/// bytes in and out, as a plaintext connection's buffers do) and snow's own `TransportState`.
#[test]
#[ignore = "a timing, not a check: run by hand"]
fn throughput_of_100_byte_records() {
    const ROUNDS: u32 = 1_000_000;
    let text = [0x42u8; 100];
    let mut wire = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(4096);

    time("plaintext baseline (copy in, copy out)", ROUNDS, || {
        wire.extend_from_slice(&text);
        out.extend_from_slice(&wire.split_to(100));
        std::hint::black_box(&out);
        out.clear();
        wire.clear();
    });

    let (mut a, mut b) = pair();
    time("Transport::seal + Transport::open", ROUNDS, || {
        a.seal(&text, &mut wire).unwrap();
        b.open(&mut wire, LIMIT, &mut out).unwrap();
        std::hint::black_box(&out);
        out.clear();
        wire.clear();
    });

    let params: snow::params::NoiseParams = "Noise_NN_25519_ChaChaPoly_BLAKE2s".parse().unwrap();
    let mut i = snow::Builder::new(params.clone())
        .build_initiator()
        .unwrap();
    let mut r = snow::Builder::new(params).build_responder().unwrap();
    let (mut m, mut p) = ([0u8; 256], [0u8; 256]);
    let n = i.write_message(&[], &mut m).unwrap();
    r.read_message(&m[..n], &mut p).unwrap();
    let n = r.write_message(&[], &mut m).unwrap();
    i.read_message(&m[..n], &mut p).unwrap();
    let (mut i, mut r) = (
        i.into_transport_mode().unwrap(),
        r.into_transport_mode().unwrap(),
    );
    time(
        "snow TransportState write + read (baseline)",
        ROUNDS,
        || {
            let n = i.write_message(&text, &mut m).unwrap();
            let n = r.read_message(&m[..n], &mut p).unwrap();
            std::hint::black_box(&p[..n]);
        },
    );
    println!(
        "size_of: Transport {} B, snow TransportState {} B (+ its boxed ciphers)",
        std::mem::size_of::<Transport>(),
        std::mem::size_of::<snow::TransportState>()
    );
}
