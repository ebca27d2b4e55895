//! `protocol/noise-vectors.json`: the exact bytes of both handshakes and of the first records,
//! from fixed static and ephemeral keys, for people writing a client in another language.
//!
//! Generated from the state machines in this module; with `COURIER_WRITE_VECTORS=1` the test
//! rewrites the file, otherwise it checks it. A second test derives the same bytes with snow
//! directly (no Courier code but the framing), so the vectors are standard Noise.

use std::path::PathBuf;

use bytes::BytesMut;
use serde_json::{json, Value};

use super::*;
use crate::{encode, Frame, Hello, Ping, Welcome, DEFAULT_MAX_FRAME_LEN};

const CLIENT_STATIC: [u8; KEY_LEN] = [0x43; KEY_LEN];
const SERVER_STATIC: [u8; KEY_LEN] = [0x53; KEY_LEN];
const CLIENT_EPHEMERAL: [u8; KEY_LEN] = [0x65; KEY_LEN];
const SERVER_EPHEMERAL: [u8; KEY_LEN] = [0x45; KEY_LEN];
/// The key a client wrongly pinned in the refusal vector.
const OTHER_STATIC: [u8; KEY_LEN] = [0x99; KEY_LEN];

/// The plaintext records after the handshake: who sends, and the Courier frame inside.
fn record_frames() -> Vec<(&'static str, u32, Frame)> {
    vec![
        (
            "client",
            1,
            Hello {
                version: 1,
                client: "cli/0.1".into(),
            }
            .into(),
        ),
        (
            "server",
            1,
            Welcome {
                version: 1,
                max_frame: DEFAULT_MAX_FRAME_LEN,
                heartbeat_secs: 30,
                node: "n1".into(),
            }
            .into(),
        ),
        ("client", 2, Ping { nonce: 7 }.into()),
    ]
}

fn frame_bytes(request_id: u32, frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(request_id, frame, &mut buf);
    buf
}

/// A handshake between fixed keys: each message as sent on the wire, then the records.
fn handshake_vector(pattern: Pattern, name: &str) -> Value {
    let client_key = Keypair::from_private(CLIENT_STATIC);
    let server_key = Keypair::from_private(SERVER_STATIC);
    let pinned = (pattern == Pattern::Ik).then(|| server_key.public());
    let mut to_server = BytesMut::new();
    let mut client = Handshake::initiator(
        pattern,
        &client_key,
        pinned,
        Some(CLIENT_EPHEMERAL),
        &mut to_server,
    )
    .unwrap();
    let mut server = Handshake::responder_with(&server_key, Some(SERVER_EPHEMERAL));
    let mut messages = vec![json!({"from": "client", "hex": hex::encode(&to_server)})];
    let mut to_client = BytesMut::new();
    let (mut client_done, mut server_done) = (None, None);
    while client_done.is_none() || server_done.is_none() {
        if server_done.is_none() && !to_server.is_empty() {
            server_done = server.handle(&mut to_server, &mut to_client).unwrap();
            if !to_client.is_empty() {
                messages.push(json!({"from": "server", "hex": hex::encode(&to_client)}));
            }
        }
        if client_done.is_none() && !to_client.is_empty() {
            client_done = client.handle(&mut to_client, &mut to_server).unwrap();
            if !to_server.is_empty() {
                messages.push(json!({"from": "client", "hex": hex::encode(&to_server)}));
            }
        }
    }
    let (mut client_done, mut server_done) = (client_done.unwrap(), server_done.unwrap());
    assert_eq!(client_done.handshake_hash, server_done.handshake_hash);
    let records: Vec<Value> = record_frames()
        .iter()
        .enumerate()
        .map(|(index, (from, request_id, frame))| {
            let plaintext = frame_bytes(*request_id, frame);
            let (sender, receiver) = match *from {
                "client" => (&mut client_done.transport, &mut server_done.transport),
                _ => (&mut server_done.transport, &mut client_done.transport),
            };
            let nonce = record_frames()[..index]
                .iter()
                .filter(|(f, _, _)| f == from)
                .count();
            let mut wire = BytesMut::new();
            sender.seal(&plaintext, &mut wire).unwrap();
            let hex = hex::encode(&wire);
            let mut opened = BytesMut::new();
            receiver
                .open_all(&mut wire, MAX_RECORD_LEN, &mut opened)
                .unwrap();
            assert_eq!(opened, plaintext);
            json!({
                "from": from,
                "nonce": nonce,
                "plaintext": format!("{:?} (request id {request_id})", frame),
                "plaintext_hex": hex::encode(&plaintext),
                "hex": hex,
            })
        })
        .collect();
    json!({
        "protocol": name,
        "pattern_byte": format!("0x{:02x}", pattern as u8),
        "client_pinned": pinned.map(|k| k.to_string()),
        "messages": messages,
        "handshake_hash": hex::encode(client_done.handshake_hash),
        "records": records,
    })
}

/// IK with the wrong key pinned: message 1, then the server's refusal.
fn refusal_vector() -> Value {
    let client_key = Keypair::from_private(CLIENT_STATIC);
    let server_key = Keypair::from_private(SERVER_STATIC);
    let pinned = Keypair::from_private(OTHER_STATIC).public();
    let mut to_server = BytesMut::new();
    Handshake::initiator(
        Pattern::Ik,
        &client_key,
        Some(pinned),
        Some(CLIENT_EPHEMERAL),
        &mut to_server,
    )
    .unwrap();
    let first = hex::encode(&to_server);
    let mut server = Handshake::responder_with(&server_key, Some(SERVER_EPHEMERAL));
    let mut to_client = BytesMut::new();
    let error = server.handle(&mut to_server, &mut to_client).unwrap_err();
    assert_eq!(error, Error::ClientPinnedOtherKey);
    json!({
        "protocol": NOISE_IK,
        "client_pinned": pinned.to_string(),
        "messages": [
            {"from": "client", "hex": first},
            {"from": "server", "hex": hex::encode(&to_client)},
        ],
        "server_error": error.to_string(),
    })
}

/// Bytes a server must refuse at the start of a connection, with the error.
fn invalid() -> Vec<Value> {
    let server_key = Keypair::from_private(SERVER_STATIC);
    let hello = frame_bytes(1, &record_frames()[0].2);
    let cases: Vec<(String, &str)> = vec![
        (
            hex::encode(&hello),
            "A plaintext HELLO: its u32 length starts 00 00, a zero handshake length.",
        ),
        (
            "0101".into(),
            "A handshake length of 257, over the 256-byte limit: refused from the prefix.",
        ),
        (
            format!("0021{}{}", "07", "00".repeat(32)),
            "Pattern byte 0x07 is not assigned.",
        ),
    ];
    cases
        .into_iter()
        .map(|(hex, description)| {
            let mut input = BytesMut::from(&hex::decode(&hex).unwrap()[..]);
            let mut out = BytesMut::new();
            let error = Handshake::responder(&server_key)
                .handle(&mut input, &mut out)
                .unwrap_err();
            json!({"to": "server", "hex": hex, "description": description, "error": error.to_string()})
        })
        .collect()
}

fn vectors_json() -> Value {
    let key = |private: [u8; KEY_LEN]| {
        let pair = Keypair::from_private(private);
        json!({"private": hex::encode(private), "public": pair.public().to_string()})
    };
    json!({
        "about": "Courier Noise transport test vectors, generated by protocol/src/noise/vectors.rs \
                  (see protocol/NOISE.md; the server does not serve this transport yet). Prologue \
                  \"courier/1\". Each handshake message is a u16 BE length + body; the client's \
                  first body starts with the pattern byte. Records are u16 BE length + \
                  ChaCha20-Poly1305 ciphertext + 16-byte tag, nonce = counter per direction. \
                  Ephemeral keys are fixed here only to make the bytes reproducible; a real \
                  handshake draws them at random.",
        "prologue_hex": hex::encode(PROLOGUE),
        "keys": {
            "client_static": key(CLIENT_STATIC),
            "server_static": key(SERVER_STATIC),
            "client_ephemeral": key(CLIENT_EPHEMERAL),
            "server_ephemeral": key(SERVER_EPHEMERAL),
            "other_static": key(OTHER_STATIC),
        },
        "xx": handshake_vector(Pattern::Xx, NOISE_XX),
        "ik": handshake_vector(Pattern::Ik, NOISE_IK),
        "ik_wrong_pin": refusal_vector(),
        "invalid": invalid(),
    })
}

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("noise-vectors.json")
}

#[test]
fn noise_vectors_file_matches_the_code() {
    let generated = vectors_json();
    let path = vectors_path();
    if std::env::var_os("COURIER_WRITE_VECTORS").is_some_and(|v| v == "1") {
        let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
    }
    let text = std::fs::read_to_string(&path)
        .expect("protocol/noise-vectors.json is missing: run with COURIER_WRITE_VECTORS=1");
    let on_disk: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        on_disk, generated,
        "protocol/noise-vectors.json is stale: rerun with COURIER_WRITE_VECTORS=1 and review the diff"
    );
}

/// The file's bytes, rederived with snow alone (its HandshakeState and TransportState), only
/// adding the length prefixes and the pattern byte.
#[test]
fn noise_vectors_are_what_plain_snow_produces() {
    let text = std::fs::read_to_string(vectors_path()).unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    for (section, name, pattern) in [("xx", NOISE_XX, Pattern::Xx), ("ik", NOISE_IK, Pattern::Ik)] {
        let vector = &file[section];
        let server_public = Keypair::from_private(SERVER_STATIC).public();
        let mut client = snow::Builder::new(name.parse().unwrap())
            .prologue(PROLOGUE)
            .unwrap()
            .local_private_key(&CLIENT_STATIC)
            .unwrap()
            .fixed_ephemeral_key_for_testing_only(&CLIENT_EPHEMERAL);
        if pattern == Pattern::Ik {
            client = client.remote_public_key(server_public.as_bytes()).unwrap();
        }
        let mut client = client.build_initiator().unwrap();
        let mut server = snow::Builder::new(name.parse().unwrap())
            .prologue(PROLOGUE)
            .unwrap()
            .local_private_key(&SERVER_STATIC)
            .unwrap()
            .fixed_ephemeral_key_for_testing_only(&SERVER_EPHEMERAL)
            .build_responder()
            .unwrap();
        let (mut buf, mut payload) = ([0u8; 512], [0u8; 512]);
        let messages = vector["messages"].as_array().unwrap();
        for (index, message) in messages.iter().enumerate() {
            let from_client = message["from"] == "client";
            let (writer, reader) = if from_client {
                (&mut client, &mut server)
            } else {
                (&mut server, &mut client)
            };
            let n = writer.write_message(&[], &mut buf).unwrap();
            reader.read_message(&buf[..n], &mut payload).unwrap();
            let mut expected = ((n + usize::from(index == 0)) as u16)
                .to_be_bytes()
                .to_vec();
            if index == 0 {
                expected.push(pattern as u8);
            }
            expected.extend_from_slice(&buf[..n]);
            assert_eq!(
                message["hex"],
                hex::encode(&expected),
                "{section} message {index}"
            );
        }
        assert_eq!(
            vector["handshake_hash"],
            hex::encode(client.get_handshake_hash())
        );
        let mut client = client.into_transport_mode().unwrap();
        let mut server = server.into_transport_mode().unwrap();
        for record in vector["records"].as_array().unwrap() {
            let plaintext = hex::decode(record["plaintext_hex"].as_str().unwrap()).unwrap();
            let writer = if record["from"] == "client" {
                &mut client
            } else {
                &mut server
            };
            let n = writer.write_message(&plaintext, &mut buf).unwrap();
            let mut expected = (n as u16).to_be_bytes().to_vec();
            expected.extend_from_slice(&buf[..n]);
            assert_eq!(record["hex"], hex::encode(&expected), "{section} record");
        }
    }
}
