//! Arbitrary bytes into the Noise layer: a server's handshake, then an established transport.
//!
//! The first input byte picks the piece size and whether the bytes go to a fresh server
//! handshake or to an established transport; the rest is the stream. Properties: no panic; the
//! input buffer never grows past what was received; a record never opens on a transport whose
//! keys the input cannot know. (A handshake may complete: anyone who knows the server's public
//! key can write a valid IK message 1, and the seeds do; the bytes after it then go to the
//! transport it established.)

#![no_main]

use bytes::BytesMut;
use courier_protocol::noise::{Handshake, Keypair, MAX_RECORD_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(control & 0x7f).max(1);
    let server_key = Keypair::from_private([0x53; 32]);
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let bound = 2 * stream.len().max(64);
    if control & 0x80 == 0 {
        let mut server = Handshake::responder(&server_key);
        for chunk in stream.chunks(piece) {
            buf.extend_from_slice(chunk);
            match server.handle(&mut buf, &mut out) {
                Ok(None) => {}
                Ok(Some(mut done)) => {
                    let _ = done.transport.open_all(&mut buf, MAX_RECORD_LEN, &mut out);
                    assert!(buf.capacity() <= bound);
                    return;
                }
                Err(_) => return,
            }
            assert!(buf.capacity() <= bound);
        }
    } else {
        let client_key = Keypair::from_private([0x43; 32]);
        let mut to_server = BytesMut::new();
        let mut client = Handshake::initiator_xx(&client_key, None, &mut to_server).unwrap();
        let mut server = Handshake::responder(&server_key);
        let mut to_client = BytesMut::new();
        server.handle(&mut to_server, &mut to_client).unwrap();
        client.handle(&mut to_client, &mut to_server).unwrap().unwrap();
        let mut server = server.handle(&mut to_server, &mut to_client).unwrap().unwrap();
        for chunk in stream.chunks(piece) {
            buf.extend_from_slice(chunk);
            if server.transport.open_all(&mut buf, MAX_RECORD_LEN, &mut out).is_err() {
                break;
            }
            assert!(out.is_empty(), "a record opened from fuzz input");
            assert!(buf.capacity() <= bound);
        }
    }
});
