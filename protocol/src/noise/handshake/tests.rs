use super::*;
use crate::noise::MAX_RECORD_LEN;

fn server_key() -> Keypair {
    Keypair::from_private([0x53; KEY_LEN])
}

fn client_key() -> Keypair {
    Keypair::from_private([0x43; KEY_LEN])
}

fn other_key() -> Keypair {
    Keypair::from_private([0x99; KEY_LEN])
}

/// Both sides' outcome.
struct Outcome {
    client: Result<Established, Error>,
    server: Result<Established, Error>,
    /// What the client sent that the server did not take (nothing, after a refusal).
    to_server: BytesMut,
}

/// Shuttles bytes between a started client and a server, `chunk` bytes at a time, until both
/// are done or one fails (the other then sees the bytes it was sent, then end of stream).
fn run(mut client: Handshake, mut to_server: BytesMut, server: &Keypair, chunk: usize) -> Outcome {
    let mut server = Handshake::responder(server);
    let mut to_client = BytesMut::new();
    let (mut client_in, mut server_in) = (BytesMut::new(), BytesMut::new());
    let (mut client_done, mut server_done) = (None, None);
    for _ in 0..10_000 {
        if server_done.is_none() {
            let n = chunk.min(to_server.len());
            server_in.extend_from_slice(&to_server.split_to(n));
            match server.handle(&mut server_in, &mut to_client) {
                Ok(None) => {}
                Ok(Some(done)) => server_done = Some(Ok(done)),
                Err(e) => server_done = Some(Err(e)),
            }
        }
        if client_done.is_none() {
            let n = chunk.min(to_client.len());
            client_in.extend_from_slice(&to_client.split_to(n));
            match client.handle(&mut client_in, &mut to_server) {
                Ok(None) => {}
                Ok(Some(done)) => client_done = Some(Ok(done)),
                Err(e) => client_done = Some(Err(e)),
            }
        }
        let stalled = to_server.is_empty() && to_client.is_empty();
        if (client_done.is_some() && server_done.is_some())
            || (stalled && (client_done.is_some() || server_done.is_some()))
        {
            break;
        }
    }
    to_server.unsplit(server_in);
    Outcome {
        client: client_done.expect("the client finished or failed"),
        server: server_done.unwrap_or(Err(Error::HandshakeDone)),
        to_server,
    }
}

fn start(pattern: Pattern, pinned: Option<PublicKey>) -> (Handshake, BytesMut) {
    let mut out = BytesMut::new();
    let hs = Handshake::initiator(pattern, &client_key(), pinned, None, &mut out).unwrap();
    (hs, out)
}

fn assert_records_flow(client: &mut Transport, server: &mut Transport) {
    let mut wire = BytesMut::new();
    let mut out = BytesMut::new();
    client.seal(b"HELLO", &mut wire).unwrap();
    server
        .open_all(&mut wire, MAX_RECORD_LEN, &mut out)
        .unwrap();
    assert_eq!(&out[..], b"HELLO");
    out.clear();
    server.seal(b"WELCOME", &mut wire).unwrap();
    client
        .open_all(&mut wire, MAX_RECORD_LEN, &mut out)
        .unwrap();
    assert_eq!(&out[..], b"WELCOME");
}

#[test]
fn xx_handshake_learns_both_keys_and_carries_records() {
    let (hs, out) = start(Pattern::Xx, None);
    assert_eq!(out.len(), 35, "message 1: len, pattern, e");
    let outcome = run(hs, out, &server_key(), usize::MAX);
    let mut client = outcome.client.unwrap();
    let mut server = outcome.server.unwrap();
    assert_eq!(client.remote, server_key().public());
    assert_eq!(server.remote, client_key().public());
    assert_eq!((client.pattern, server.pattern), (Pattern::Xx, Pattern::Xx));
    assert_eq!(client.handshake_hash, server.handshake_hash);
    assert_records_flow(&mut client.transport, &mut server.transport);
}

#[test]
fn xx_with_the_right_pin_connects() {
    let (hs, out) = start(Pattern::Xx, Some(server_key().public()));
    let outcome = run(hs, out, &server_key(), usize::MAX);
    assert_eq!(outcome.client.unwrap().remote, server_key().public());
    outcome.server.unwrap();
}

#[test]
fn ik_handshake_takes_one_round_trip() {
    let mut to_server = BytesMut::new();
    let mut client =
        Handshake::initiator_ik(&client_key(), server_key().public(), &mut to_server).unwrap();
    assert_eq!(to_server.len(), 99, "message 1: len, pattern, e, s, tag");
    let mut server = Handshake::responder(&server_key());
    let mut to_client = BytesMut::new();
    let mut server_done = server
        .handle(&mut to_server, &mut to_client)
        .unwrap()
        .unwrap();
    assert_eq!(to_client.len(), 50, "message 2: len, e, tag");
    let mut client_done = client
        .handle(&mut to_client, &mut to_server)
        .unwrap()
        .unwrap();
    assert!(to_server.is_empty(), "no third message");
    assert_eq!(server_done.remote, client_key().public());
    assert_eq!(client_done.remote, server_key().public());
    assert_eq!(client_done.handshake_hash, server_done.handshake_hash);
    assert_records_flow(&mut client_done.transport, &mut server_done.transport);
}

#[test]
fn handshakes_complete_when_fed_byte_by_byte() {
    for pattern in [Pattern::Xx, Pattern::Ik] {
        let (hs, out) = start(pattern, Some(server_key().public()));
        let outcome = run(hs, out, &server_key(), 1);
        let mut client = outcome.client.unwrap();
        let mut server = outcome.server.unwrap();
        assert_records_flow(&mut client.transport, &mut server.transport);
    }
}

#[test]
fn records_sent_right_after_the_handshake_stay_in_the_input() {
    // The client seals its first frame in the same write as XX message 3.
    let (mut client, mut to_server) = start(Pattern::Xx, None);
    let mut server = Handshake::responder(&server_key());
    let mut to_client = BytesMut::new();
    assert!(server
        .handle(&mut to_server, &mut to_client)
        .unwrap()
        .is_none());
    let mut client_done = client
        .handle(&mut to_client, &mut to_server)
        .unwrap()
        .unwrap();
    client_done
        .transport
        .seal(b"early", &mut to_server)
        .unwrap();
    let mut server_done = server
        .handle(&mut to_server, &mut to_client)
        .unwrap()
        .unwrap();
    let mut out = BytesMut::new();
    server_done
        .transport
        .open_all(&mut to_server, MAX_RECORD_LEN, &mut out)
        .unwrap();
    assert_eq!(&out[..], b"early");
    assert_eq!(
        server.handle(&mut to_server, &mut to_client).unwrap_err(),
        Error::HandshakeDone
    );
}

#[test]
fn xx_refuses_a_server_that_is_not_the_pinned_one_before_sending_its_own_key() {
    let pinned = other_key().public();
    let (hs, out) = start(Pattern::Xx, Some(pinned));
    let outcome = run(hs, out, &server_key(), usize::MAX);
    let error = outcome.client.unwrap_err();
    assert_eq!(
        error,
        Error::ServerKeyMismatch {
            pinned,
            presented: Some(server_key().public())
        }
    );
    let text = error.to_string();
    assert!(
        text.starts_with("the server's key is not the one pinned"),
        "{text}"
    );
    assert!(text.contains(&server_key().public().to_string()), "{text}");
    assert!(
        outcome.to_server.is_empty(),
        "message 3 (the client's key) never sent"
    );
    assert!(outcome.server.is_err(), "the server never finishes");
}

#[test]
fn ik_with_a_wrong_pin_is_refused_in_words_on_both_sides() {
    let pinned = other_key().public();
    let mut to_server = BytesMut::new();
    let mut client = Handshake::initiator_ik(&client_key(), pinned, &mut to_server).unwrap();
    let mut server = Handshake::responder(&server_key());
    let mut to_client = BytesMut::new();
    assert_eq!(
        server.handle(&mut to_server, &mut to_client).unwrap_err(),
        Error::ClientPinnedOtherKey
    );
    assert_eq!(&to_client[..], [0x00, 0x01, REJECT_KEY_MISMATCH]);
    let error = client.handle(&mut to_client, &mut to_server).unwrap_err();
    assert_eq!(
        error,
        Error::ServerKeyMismatch {
            pinned,
            presented: None
        }
    );
    assert!(error
        .to_string()
        .starts_with("the server's key is not the one pinned"));
}

#[test]
fn a_rekeyed_server_is_never_accepted_while_the_old_key_is_pinned() {
    // The client pinned the server's old key; the server now has a new one.
    let old = other_key().public();
    let new_server = server_key();
    let mut to_server = BytesMut::new();
    let ik = Handshake::initiator_ik(&client_key(), old, &mut to_server).unwrap();
    let ik = run(ik, to_server, &new_server, usize::MAX);
    assert!(matches!(
        ik.client,
        Err(Error::ServerKeyMismatch {
            presented: None,
            ..
        })
    ));
    // Falling back to XX keeps the pin: the new key is shown, not accepted.
    let (xx, out) = start(Pattern::Xx, Some(old));
    let xx = run(xx, out, &new_server, usize::MAX);
    assert_eq!(
        xx.client.unwrap_err(),
        Error::ServerKeyMismatch {
            pinned: old,
            presented: Some(new_server.public())
        }
    );
}

#[test]
fn a_plaintext_courier_client_is_told_to_use_the_encrypted_transport() {
    let mut input = BytesMut::new();
    let hello = crate::Hello {
        version: 1,
        client: "cli/0.1".into(),
    };
    crate::encode(1, &hello.into(), &mut input);
    let mut server = Handshake::responder(&server_key());
    let mut out = BytesMut::new();
    let error = server.handle(&mut input, &mut out).unwrap_err();
    assert_eq!(error, Error::PlaintextPeer);
    assert!(error.to_string().contains("plaintext Courier frame"));
    assert!(out.is_empty());
}

#[test]
fn bad_handshake_framing_is_refused_before_buffering() {
    let mut server = Handshake::responder(&server_key());
    let mut out = BytesMut::new();
    // 257 announced: refused from the prefix alone.
    let mut input = BytesMut::from(&[0x01, 0x01][..]);
    assert_eq!(
        server.handle(&mut input, &mut out).unwrap_err(),
        Error::HandshakeMsgLen { len: 257, max: 256 }
    );
    let mut input = BytesMut::from(&[0x00, 0x21, 0x07][..]);
    input.extend_from_slice(&[0; 32]);
    assert_eq!(
        Handshake::responder(&server_key())
            .handle(&mut input, &mut out)
            .unwrap_err(),
        Error::UnknownPattern(0x07)
    );
    // After message 1, a zero length is a framing error, not a plaintext frame.
    let (mut client, mut to_server) = start(Pattern::Xx, None);
    let mut server = Handshake::responder(&server_key());
    let mut to_client = BytesMut::new();
    server.handle(&mut to_server, &mut to_client).unwrap();
    let mut zero = BytesMut::from(&[0x00, 0x00][..]);
    assert_eq!(
        server.handle(&mut zero, &mut to_client).unwrap_err(),
        Error::HandshakeMsgLen { len: 0, max: 256 }
    );
    let mut zero = BytesMut::from(&[0x00, 0x00][..]);
    assert_eq!(
        client.handle(&mut zero, &mut to_server).unwrap_err(),
        Error::HandshakeMsgLen { len: 0, max: 256 }
    );
}

#[test]
fn a_tampered_handshake_message_fails() {
    let (mut client, mut to_server) = start(Pattern::Xx, None);
    let mut server = Handshake::responder(&server_key());
    let mut to_client = BytesMut::new();
    server.handle(&mut to_server, &mut to_client).unwrap();
    let last = to_client.len() - 1;
    to_client[last] ^= 0x80;
    assert_eq!(
        client.handle(&mut to_client, &mut to_server).unwrap_err(),
        Error::Handshake(snow::Error::Decrypt)
    );
}

/// Our handshake and records against snow's own `TransportState`: the records are standard
/// Noise transport messages (same keys, nonce layout, tag).
#[test]
fn records_interoperate_with_snow_transport_mode() {
    let server = server_key();
    let mut raw = snow::Builder::new(NOISE_XX.parse().unwrap())
        .prologue(PROLOGUE)
        .unwrap()
        .local_private_key(server.private())
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut client, mut to_server) = start(Pattern::Xx, None);
    let mut buf = [0u8; 1024];
    let mut payload = [0u8; 1024];
    // Message 1: strip our length and pattern byte.
    raw.read_message(&to_server[3..], &mut payload).unwrap();
    let n = raw.write_message(&[], &mut buf).unwrap();
    let mut to_client = BytesMut::new();
    put_message(&mut to_client, &buf[..n]);
    to_server.clear();
    let mut done = client
        .handle(&mut to_client, &mut to_server)
        .unwrap()
        .unwrap();
    raw.read_message(&to_server[2..], &mut payload).unwrap();
    let mut raw = raw.into_transport_mode().unwrap();

    let mut wire = BytesMut::new();
    done.transport.seal(b"from courier", &mut wire).unwrap();
    done.transport.seal(b"second", &mut wire).unwrap();
    let n = raw
        .read_message(&wire[2..2 + 12 + 16], &mut payload)
        .unwrap();
    assert_eq!(&payload[..n], b"from courier");
    let n = raw.read_message(&wire[2 + 28 + 2..], &mut payload).unwrap();
    assert_eq!(&payload[..n], b"second");

    let n = raw.write_message(b"from snow", &mut buf).unwrap();
    let mut input = BytesMut::new();
    put_message(&mut input, &buf[..n]);
    let mut out = BytesMut::new();
    done.transport
        .open_all(&mut input, MAX_RECORD_LEN, &mut out)
        .unwrap();
    assert_eq!(&out[..], b"from snow");
}

/// `cargo test -p courier-protocol --lib noise::handshake::tests::handshake_cost -- --ignored --nocapture`
///
/// CPU time of one whole handshake, both sides in this thread (the server does about half:
/// in XX each side does 3 X25519 operations plus key generation, in IK 4 plus key generation).
#[test]
#[ignore = "a timing, not a check: run by hand"]
fn handshake_cost() {
    fn cpu() -> std::time::Duration {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        let nanos = text.split_whitespace().next().and_then(|n| n.parse().ok());
        std::time::Duration::from_nanos(nanos.unwrap_or(0))
    }
    const ROUNDS: u32 = 2_000;
    for pattern in [Pattern::Xx, Pattern::Ik] {
        let (wall, cpu_start) = (std::time::Instant::now(), cpu());
        for _ in 0..ROUNDS {
            let (hs, out) = start(pattern, Some(server_key().public()));
            let outcome = run(hs, out, &server_key(), usize::MAX);
            std::hint::black_box(outcome.client.unwrap());
        }
        println!(
            "{pattern:?}: wall {:?}, cpu {:?} per handshake (both sides)",
            wall.elapsed() / ROUNDS,
            (cpu() - cpu_start) / ROUNDS
        );
    }
    // The unit of cost: one X25519 scalar multiplication, as snow does for each DH.
    let point = server_key().public();
    let (wall, cpu_start) = (std::time::Instant::now(), cpu());
    for i in 0..ROUNDS {
        let scalar = [i as u8; KEY_LEN];
        let shared = curve25519_dalek::MontgomeryPoint(*point.as_bytes()).mul_clamped(scalar);
        std::hint::black_box(shared);
    }
    println!(
        "one X25519 DH: wall {:?}, cpu {:?}",
        wall.elapsed() / ROUNDS,
        (cpu() - cpu_start) / ROUNDS
    );
    println!(
        "size_of: Handshake {} B + boxed snow HandshakeState {} B while it runs",
        std::mem::size_of::<Handshake>(),
        std::mem::size_of::<snow::HandshakeState>()
    );
}
