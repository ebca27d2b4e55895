//! Media across the nodes of a cluster, over real TCP: alice (homed on n0, where her upload's
//! bytes stay) sends it in a group that n1 owns; carol (homed on n2) downloads it by ranges
//! through n1, which checks that she is a member and has n0 serve the bytes.

mod util;

use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_protocol::{
    CreateGroup, Done, ErrorCode, Frame, MediaBegin, MediaChunk, MediaCommit, MediaGet,
    MessageKind, Send,
};
use util::cluster::Cluster;
use util::{error_code, TestConn};

/// `len` bytes that differ with `seed`.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Uploads `data` whole in chunks; returns the media id.
fn upload(c: &mut TestConn, data: &[u8]) -> Bytes {
    let Frame::MediaUpload(up) = c.request(MediaBegin {
        total_len: data.len() as u64,
        mime: "application/octet-stream".into(),
        hash: Bytes::copy_from_slice(blake3::hash(data).as_bytes()),
    }) else {
        panic!("MEDIA_BEGIN")
    };
    let mut at = up.offset as usize;
    while at < data.len() {
        let end = data.len().min(at + up.chunk_max as usize);
        let reply = c.request(MediaChunk {
            upload: up.upload,
            offset: at as u64,
            data: Bytes::copy_from_slice(&data[at..end]),
        });
        assert_eq!(reply, Done {}.into(), "chunk at {at}");
        at = end;
    }
    match c.request(MediaCommit { upload: up.upload }) {
        Frame::MediaRef(r) => r.media,
        other => panic!("MEDIA_COMMIT: {other:?}"),
    }
}

fn get(c: &mut TestConn, media: &Bytes, thread: u64, offset: u64, max_len: u32) -> Frame {
    c.request(MediaGet {
        media: media.clone(),
        offset,
        max_len,
        thread,
    })
}

/// Downloads `media` whole, in ranges of `range` bytes, naming `thread`; returns the bytes
/// and how many MEDIA_GETs it took.
fn download(c: &mut TestConn, media: &Bytes, thread: u64, range: u32) -> (Vec<u8>, usize) {
    let (mut out, mut asked) = (Vec::new(), 0);
    loop {
        asked += 1;
        match get(c, media, thread, out.len() as u64, range) {
            Frame::MediaData(d) => {
                assert_eq!(d.offset, out.len() as u64);
                out.extend_from_slice(&d.data);
                if d.data.is_empty() || out.len() as u64 >= d.total_len {
                    return (out, asked);
                }
            }
            other => panic!("MEDIA_GET at {}: {other:?}", out.len()),
        }
    }
}

fn send_media(c: &mut TestConn, thread: u64, media: &Bytes) -> Frame {
    let mut body = media.to_vec();
    body.extend_from_slice(b" caption");
    c.request(Send {
        thread,
        client_msg_id: 7,
        kind: MessageKind::Media,
        body: body.into(),
        reply_to: 0,
    })
}

/// Alice on n0 with her upload, a group owned by n1 (created by dave, homed there) with
/// alice and carol (n2) in it, and erin (n2) in no thread: every connection, the media, its
/// bytes, and the group.
struct Scene {
    cluster: Cluster,
    alice: TestConn,
    alice_id: u64,
    carol: TestConn,
    erin: TestConn,
    media: Bytes,
    data: Vec<u8>,
    group: u64,
}

fn scene() -> Scene {
    let cluster = Cluster::start();
    let (mut alice, alice_id) = cluster.user_on(0, "alice");
    let (mut dave, _) = cluster.user_on(1, "dave");
    let (carol, carol_id) = cluster.user_on(2, "carol");
    let (erin, _) = cluster.user_on(2, "erin");
    let Frame::ThreadInfo(t) = dave.request(CreateGroup {
        name: "photos".into(),
        members: vec![alice_id, carol_id],
    }) else {
        panic!("CREATE_GROUP failed");
    };
    let group = t.thread.id;
    assert_eq!(cluster.home_of_id(group), 1, "the group lives on n1");
    let data = content(5_000, 3);
    let media = upload(&mut alice, &data);
    match send_media(&mut alice, group, &media) {
        Frame::Sent(_) => {}
        other => panic!("SEND of media uploaded on n0 to a group of n1: {other:?}"),
    }
    Scene {
        cluster,
        alice,
        alice_id,
        carol,
        erin,
        media,
        data,
        group,
    }
}

#[test]
fn media_uploaded_on_one_node_and_sent_in_a_thread_of_another_is_read_from_a_third() {
    let mut s = scene();
    // Five ranges, each served by n0 through n1.
    let (got, asked) = download(&mut s.carol, &s.media, s.group, 1_200);
    assert!(got == s.data, "the downloaded bytes differ");
    assert_eq!(asked, 5);
    // The uploader still reads it on her home, naming the thread or not.
    let (mine, _) = download(&mut s.alice, &s.media, s.group, 4_000);
    assert!(mine == s.data);
    let (mine, _) = download(&mut s.alice, &s.media, 0, 4_000);
    assert!(mine == s.data);
    // Sent again (a retry with the same client id): the same SENT.
    assert!(matches!(
        send_media(&mut s.alice, s.group, &s.media),
        Frame::Sent(_)
    ));
    // Carol may send it on in the same thread: n1 knows from its link where the bytes are.
    assert!(matches!(
        send_media(&mut s.carol, s.group, &s.media),
        Frame::Sent(_)
    ));
}

#[test]
fn a_user_of_another_node_who_is_in_no_thread_of_the_media_gets_unknown_media() {
    let mut s = scene();
    for thread in [s.group, 0] {
        let answer = get(&mut s.erin, &s.media, thread, 0, 1_000);
        assert_eq!(
            error_code(&answer),
            ErrorCode::UnknownMedia,
            "thread {thread}"
        );
    }
    // Nor may erin send it: she never uploaded it and is in no thread of it.
    let to_alice = util::direct(&mut s.erin, s.alice_id);
    let answer = send_media(&mut s.erin, to_alice, &s.media);
    assert_eq!(error_code(&answer), ErrorCode::UnknownMedia, "{answer:?}");
}

#[test]
fn media_whose_holder_is_down_is_unavailable_within_2s() {
    let mut s = scene();
    let (first, _) = download(&mut s.carol, &s.media, s.group, 5_000);
    assert!(first == s.data);
    s.cluster.nodes[0].kill();
    let started = Instant::now();
    let answer = get(&mut s.carol, &s.media, s.group, 0, 1_000);
    let took = started.elapsed();
    assert_eq!(error_code(&answer), ErrorCode::Unavailable, "{answer:?}");
    let Frame::ErrorReply(e) = &answer else {
        unreachable!()
    };
    assert!(e.message.contains("node n0"), "{}", e.message);
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
}
