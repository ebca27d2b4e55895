//! Hostile input to the Noise layer (`courier_protocol::noise`): random bytes and corrupted
//! handshakes or records never panic, never complete a handshake or yield plaintext they
//! should not, and never make a buffer grow past what was received.

use bytes::BytesMut;
use courier_protocol::noise::{Established, Handshake, Keypair, Transport, MAX_RECORD_LEN};
use proptest::prelude::*;

fn server_key() -> Keypair {
    Keypair::from_private([0x53; 32])
}

/// An established pair (client, server) over a real XX handshake.
fn established() -> (Established, Established) {
    let client_key = Keypair::from_private([0x43; 32]);
    let mut to_server = BytesMut::new();
    let mut client = Handshake::initiator_xx(&client_key, None, &mut to_server).unwrap();
    let mut server = Handshake::responder(&server_key());
    let mut to_client = BytesMut::new();
    assert!(server
        .handle(&mut to_server, &mut to_client)
        .unwrap()
        .is_none());
    let client_done = client
        .handle(&mut to_client, &mut to_server)
        .unwrap()
        .unwrap();
    let server_done = server
        .handle(&mut to_server, &mut to_client)
        .unwrap()
        .unwrap();
    (client_done, server_done)
}

/// Feeds `input` in `piece`-byte pieces to a fresh server handshake until it fails or the input
/// ends; a handshake must never complete from bytes no client made.
fn feed_handshake(input: &[u8], piece: usize) {
    let mut server = Handshake::responder(&server_key());
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    for chunk in input.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        match server.handle(&mut buf, &mut out) {
            Ok(None) => {}
            Ok(Some(_)) => panic!("a handshake completed from garbage"),
            Err(_) => return,
        }
        assert!(buf.capacity() <= 2 * input.len().max(64));
    }
}

/// Feeds `input` to an established transport; returns the plaintext it yielded before failing.
fn feed_records(transport: &mut Transport, input: &[u8], piece: usize) -> BytesMut {
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    for chunk in input.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        if transport
            .open_all(&mut buf, MAX_RECORD_LEN, &mut out)
            .is_err()
        {
            break;
        }
        assert!(buf.capacity() <= 2 * input.len().max(64));
    }
    out
}

proptest! {
    #[test]
    fn random_bytes_never_complete_a_handshake(input in proptest::collection::vec(any::<u8>(), 0..400), piece in 1usize..120) {
        feed_handshake(&input, piece);
    }

    #[test]
    fn random_bytes_never_open_as_records(input in proptest::collection::vec(any::<u8>(), 0..2000), piece in 1usize..300) {
        let (_, mut server) = established();
        let out = feed_records(&mut server.transport, &input, piece);
        prop_assert!(out.is_empty(), "plaintext from forged records");
    }

    #[test]
    fn a_corrupted_client_handshake_never_completes(at in 0usize..200, xor in 1u8..=255) {
        // A genuine XX message 1 (35 bytes) followed by a genuine message 3 (66 bytes) cannot be
        // replayed into another handshake, and neither can a corrupted copy.
        let client_key = Keypair::from_private([0x43; 32]);
        let mut wire = BytesMut::new();
        let mut client = Handshake::initiator_xx(&client_key, None, &mut wire).unwrap();
        let mut server = Handshake::responder(&server_key());
        let mut reply = BytesMut::new();
        let mut first = wire.clone();
        server.handle(&mut first, &mut reply).unwrap();
        client.handle(&mut reply, &mut wire).unwrap().unwrap();
        let mut input = wire.to_vec();
        let at = at % input.len();
        input[at] ^= xor;
        feed_handshake(&input, 7);
        feed_handshake(&wire, 7);
    }

    #[test]
    fn corrupted_records_yield_only_the_records_before_the_damage(at in 0usize..400, xor in 1u8..=255) {
        let (mut client, mut server) = established();
        let texts: [&[u8]; 4] = [b"HELLO", b"LOGIN alice", b"", b"SEND hi"];
        let mut wire = BytesMut::new();
        let mut ends = Vec::new();
        for text in texts {
            client.transport.seal(text, &mut wire).unwrap();
            ends.push(wire.len());
        }
        let at = at % wire.len();
        let mut input = wire.to_vec();
        input[at] ^= xor;
        let out = feed_records(&mut server.transport, &input, 5);
        let intact = ends.iter().take_while(|&&end| end <= at).count();
        let expected = texts[..intact].concat();
        prop_assert_eq!(&out[..], expected.as_slice());
    }
}
