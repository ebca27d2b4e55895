//! Media over real TCP: content-addressed, resumable uploads; ranged, authorized downloads;
//! limits; garbage collection.

mod util;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_protocol::{
    CreateGroup, Done, ErrorCode, Frame, MediaBegin, MediaChunk, MediaCommit, MediaGet,
    MessageKind, Recall, Send,
};
use util::{direct, error_code, Server, TestConn};

/// `len` bytes that differ with `seed`.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

fn hash(data: &[u8]) -> Bytes {
    Bytes::copy_from_slice(blake3::hash(data).as_bytes())
}

fn begin(c: &mut TestConn, data: &[u8]) -> Frame {
    c.request(MediaBegin {
        total_len: data.len() as u64,
        mime: "application/octet-stream".into(),
        hash: hash(data),
    })
}

/// Sends `data[from..to]` of upload `upload` in chunks of at most `chunk`.
fn chunks(c: &mut TestConn, upload: u64, data: &[u8], from: usize, to: usize, chunk: usize) {
    let mut at = from;
    while at < to {
        let end = to.min(at + chunk);
        let reply = c.request(MediaChunk {
            upload,
            offset: at as u64,
            data: Bytes::copy_from_slice(&data[at..end]),
        });
        assert_eq!(reply, Done {}.into(), "chunk at {at}");
        at = end;
    }
}

/// Uploads `data` whole; returns the media id.
fn upload(c: &mut TestConn, data: &[u8]) -> Bytes {
    let Frame::MediaUpload(up) = begin(c, data) else {
        panic!("MEDIA_BEGIN")
    };
    let from = up.offset as usize;
    chunks(c, up.upload, data, from, data.len(), up.chunk_max as usize);
    match c.request(MediaCommit { upload: up.upload }) {
        Frame::MediaRef(r) => {
            assert_eq!(r.total_len, data.len() as u64);
            r.media
        }
        other => panic!("MEDIA_COMMIT: {other:?}"),
    }
}

fn get(c: &mut TestConn, media: &Bytes, offset: u64, max_len: u32) -> Frame {
    get_in(c, media, 0, offset, max_len)
}

/// MEDIA_GET naming `thread` as where the media was seen.
fn get_in(c: &mut TestConn, media: &Bytes, thread: u64, offset: u64, max_len: u32) -> Frame {
    c.request(MediaGet {
        media: media.clone(),
        offset,
        max_len,
        thread,
    })
}

/// Downloads a media object whole, in ranges of `range` bytes.
fn download(c: &mut TestConn, media: &Bytes, range: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        match get(c, media, out.len() as u64, range) {
            Frame::MediaData(d) => {
                assert_eq!(d.offset, out.len() as u64);
                out.extend_from_slice(&d.data);
                if d.data.is_empty() || out.len() as u64 >= d.total_len {
                    return out;
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
        client_msg_id: 0,
        kind: MessageKind::Media,
        body: body.into(),
        reply_to: 0,
    })
}

/// Files under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn blobs(server: &Server) -> Vec<std::path::PathBuf> {
    files(&server.data_dir.join("media/blobs"))
}

fn parts(server: &Server) -> Vec<std::path::PathBuf> {
    files(&server.data_dir.join("media/parts"))
}

#[test]
fn media_round_trips_by_ranges_and_its_id_is_the_blake3_hash() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let data = content(300_000, 1);
    let media = upload(&mut alice, &data);
    assert_eq!(media, hash(&data));
    let t = direct(&mut alice, b.user);
    assert!(matches!(send_media(&mut alice, t, &media), Frame::Sent(_)));
    assert_eq!(download(&mut bob, &media, 50_000), data);
    // A range in the middle, read at its offset.
    let Frame::MediaData(d) = get(&mut bob, &media, 123_457, 1000) else {
        panic!()
    };
    assert_eq!(&d.data[..], &data[123_457..124_457]);
    assert_eq!(blobs(&server).len(), 1);
    assert!(parts(&server).is_empty(), "the part became the blob");
}

#[test]
fn identical_content_uploaded_twice_is_stored_once() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, _) = server.user("bob");
    let data = content(100_000, 2);
    let first = upload(&mut alice, &data);
    // Bob cannot read Alice's media, so he must send the bytes: knowing a hash proves nothing.
    let Frame::MediaUpload(up) = begin(&mut bob, &data) else {
        panic!()
    };
    assert_eq!(up.offset, 0);
    chunks(
        &mut bob,
        up.upload,
        &data,
        0,
        data.len(),
        up.chunk_max as usize,
    );
    let Frame::MediaRef(r) = bob.request(MediaCommit { upload: up.upload }) else {
        panic!()
    };
    assert_eq!(r.media, first);
    assert_eq!(blobs(&server).len(), 1, "one file for both uploads");
    assert!(parts(&server).is_empty());
    assert_eq!(download(&mut bob, &first, 60_000), data);
    // Alice uploading it again has nothing to send: MEDIA_UPLOAD says the server has it all.
    let Frame::MediaUpload(again) = begin(&mut alice, &data) else {
        panic!()
    };
    assert_eq!(again.offset, data.len() as u64);
    assert!(matches!(
        alice.request(MediaCommit {
            upload: again.upload
        }),
        Frame::MediaRef(r) if r.media == first
    ));
    assert_eq!(blobs(&server).len(), 1);
}

#[test]
fn an_upload_resumes_on_a_new_connection() {
    let server = Server::start();
    let (mut alice, ok) = server.user("alice");
    let data = content(200_000, 3);
    let Frame::MediaUpload(up) = begin(&mut alice, &data) else {
        panic!()
    };
    let half = 90_000;
    chunks(&mut alice, up.upload, &data, 0, half, up.chunk_max as usize);
    drop(alice);
    let mut phone = server.resumed(&ok.token);
    let Frame::MediaUpload(resumed) = begin(&mut phone, &data) else {
        panic!()
    };
    assert_eq!((resumed.upload, resumed.offset), (up.upload, half as u64));
    // Out of order is refused; from the server's offset on it continues.
    assert_eq!(
        error_code(&phone.request(MediaChunk {
            upload: up.upload,
            offset: 0,
            data: Bytes::copy_from_slice(&data[..10]),
        })),
        ErrorCode::BadOffset
    );
    chunks(
        &mut phone,
        up.upload,
        &data,
        half,
        data.len(),
        up.chunk_max as usize,
    );
    let Frame::MediaRef(r) = phone.request(MediaCommit { upload: up.upload }) else {
        panic!()
    };
    assert_eq!(download(&mut phone, &r.media, 65_000), data);
}

#[test]
fn content_that_does_not_match_its_hash_stores_nothing() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let data = content(70_000, 4);
    let claimed = content(70_000, 5);
    let Frame::MediaUpload(up) = begin(&mut alice, &claimed) else {
        panic!()
    };
    chunks(
        &mut alice,
        up.upload,
        &data,
        0,
        data.len(),
        up.chunk_max as usize,
    );
    let reply = alice.request(MediaCommit { upload: up.upload });
    assert_eq!(
        error_code(&reply),
        ErrorCode::MediaHashMismatch,
        "{reply:?}"
    );
    assert!(blobs(&server).is_empty() && parts(&server).is_empty());
    for id in [hash(&claimed), hash(&data)] {
        assert_eq!(
            error_code(&get(&mut alice, &id, 0, 10)),
            ErrorCode::UnknownMedia
        );
    }
    // A MEDIA_BEGIN whose hash is not 32 bytes is refused up front.
    let bad = alice.request(MediaBegin {
        total_len: 5,
        mime: "text/plain".into(),
        hash: Bytes::from_static(b"short"),
    });
    assert_eq!(error_code(&bad), ErrorCode::InvalidArgument);
}

#[test]
fn only_the_uploader_and_members_of_threads_it_was_sent_in_may_download() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let (mut carol, c) = server.user("carol");
    let (mut eve, e) = server.user("eve");
    let data = content(10_000, 6);
    let media = upload(&mut alice, &data);
    let refused = |c: &mut TestConn| {
        let reply = get(c, &media, 0, 100);
        assert_eq!(error_code(&reply), ErrorCode::UnknownMedia, "{reply:?}");
        reply
    };
    // Not sent yet: only Alice. The refusal is the answer to an unknown id, word for word.
    let bob_refused = refused(&mut bob);
    let unknown = get(&mut bob, &hash(b"never uploaded"), 0, 100);
    assert_eq!(
        bob_refused, unknown,
        "a refusal must not tell that the media exists"
    );
    // Eve cannot launder the id through a thread of her own.
    let eve_eve_thread = direct(&mut eve, c.user);
    assert_eq!(
        error_code(&send_media(&mut eve, eve_eve_thread, &media)),
        ErrorCode::UnknownMedia
    );
    let t = direct(&mut alice, b.user);
    assert!(matches!(send_media(&mut alice, t, &media), Frame::Sent(_)));
    assert_eq!(download(&mut bob, &media, 4096), data);
    assert!(matches!(
        get_in(&mut bob, &media, t, 0, 10),
        Frame::MediaData(_)
    ));
    refused(&mut carol);
    refused(&mut eve);
    // Naming a thread one is not a member of grants nothing.
    let reply = get_in(&mut eve, &media, t, 0, 10);
    assert_eq!(error_code(&reply), ErrorCode::UnknownMedia, "{reply:?}");
    // Bob may forward it: then Carol, a member of the group it was sent in, may read it.
    let Frame::ThreadInfo(g) = bob.request(CreateGroup {
        name: "friends".into(),
        members: vec![c.user],
    }) else {
        panic!()
    };
    assert!(matches!(
        send_media(&mut bob, g.thread.id, &media),
        Frame::Sent(_)
    ));
    assert_eq!(download(&mut carol, &media, 4096), data);
    refused(&mut eve);
    let _ = e;
}

/// The id of the message a SEND stored.
fn sent(reply: Frame) -> u64 {
    match reply {
        Frame::Sent(s) => s.message,
        other => panic!("SEND: {other:?}"),
    }
}

#[test]
fn recalling_every_message_of_a_thread_that_sent_a_media_takes_its_members_access_back() {
    let mut server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let (mut carol, c) = server.user("carol");
    let data = content(10_000, 9);
    let media = upload(&mut alice, &data);
    let t = direct(&mut alice, b.user);
    let first = sent(send_media(&mut alice, t, &media));
    let second = sent(send_media(&mut alice, t, &media));
    let Frame::ThreadInfo(g) = alice.request(CreateGroup {
        name: "elsewhere".into(),
        members: vec![c.user],
    }) else {
        panic!()
    };
    let in_group = sent(send_media(&mut alice, g.thread.id, &media));
    let readable = |c: &mut TestConn, thread: u64| {
        matches!(get_in(c, &media, thread, 0, 10), Frame::MediaData(_))
            && matches!(get(c, &media, 0, 10), Frame::MediaData(_))
    };
    let refused = |c: &mut TestConn, thread: u64| {
        for reply in [get_in(c, &media, thread, 0, 10), get(c, &media, 0, 10)] {
            assert_eq!(error_code(&reply), ErrorCode::UnknownMedia, "{reply:?}");
        }
    };
    assert!(readable(&mut bob, t));
    let recall = |c: &mut TestConn, thread: u64, message: u64| {
        assert_eq!(c.request(Recall { thread, message }), Done {}.into());
    };
    // Another message of the thread still shows it.
    recall(&mut alice, t, first);
    assert!(
        readable(&mut bob, t),
        "the second message still refers to it"
    );
    // A second RECALL of the same message takes nothing more away.
    recall(&mut alice, t, first);
    assert!(readable(&mut bob, t), "a repeated recall counts once");
    recall(&mut alice, t, second);
    refused(&mut bob, t);
    // Bob cannot put it back into the thread either: he may not read it any more.
    assert_eq!(
        error_code(&send_media(&mut bob, t, &media)),
        ErrorCode::UnknownMedia
    );
    // The group where it was also sent keeps it; the uploader always does.
    assert!(readable(&mut carol, g.thread.id));
    assert!(readable(&mut alice, t));
    recall(&mut alice, g.thread.id, in_group);
    refused(&mut carol, g.thread.id);
    assert_eq!(download(&mut alice, &media, 4096), data);
    // Sent again, it is readable again: the count went back up from zero.
    sent(send_media(&mut alice, t, &media));
    assert!(readable(&mut bob, t));
    // And the counts are stored, not kept in memory.
    drop((alice, bob, carol));
    server.restart();
    let (mut bob, _) = login_again(&server, "bob");
    let (mut carol, _) = login_again(&server, "carol");
    assert!(readable(&mut bob, t));
    refused(&mut carol, g.thread.id);
}

fn login_again(server: &Server, handle: &str) -> (TestConn, courier_protocol::AuthOk) {
    let mut c = server.connect();
    c.hello();
    let ok = c.login(handle, util::PASSWORD, "second");
    (c, ok)
}

#[test]
fn size_and_quota_limits_are_enforced() {
    let server = Server::start_with(&[
        "--media-max-bytes",
        "50000",
        "--media-quota-bytes",
        "120000",
    ]);
    let (mut alice, _) = server.user("alice");
    let too_big = content(50_001, 7);
    assert_eq!(
        error_code(&begin(&mut alice, &too_big)),
        ErrorCode::MediaTooLarge
    );
    // 50,000 stored + 50,000 in progress: a third 50,000 would be 150,000 > 120,000.
    let stored = content(50_000, 8);
    upload(&mut alice, &stored);
    let Frame::MediaUpload(_) = begin(&mut alice, &content(50_000, 9)) else {
        panic!()
    };
    let reply = begin(&mut alice, &content(50_000, 10));
    assert_eq!(
        error_code(&reply),
        ErrorCode::MediaQuotaExceeded,
        "{reply:?}"
    );
    // Content she has already is not charged again.
    assert!(matches!(begin(&mut alice, &stored), Frame::MediaUpload(u) if u.offset == 50_000));
    // Another user has a quota of their own.
    let (mut bob, _) = server.user("bob");
    assert!(matches!(
        begin(&mut bob, &content(50_000, 10)),
        Frame::MediaUpload(_)
    ));
    // A chunk past the announced length is refused.
    let small = content(10, 11);
    let Frame::MediaUpload(up) = begin(&mut bob, &small) else {
        panic!()
    };
    let reply = bob.request(MediaChunk {
        upload: up.upload,
        offset: 0,
        data: Bytes::from(vec![0u8; 11]),
    });
    assert_eq!(error_code(&reply), ErrorCode::MediaTooLarge);
}

/// Polls `done` until it holds or `within` passes.
fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

#[test]
fn abandoned_uploads_and_unreferenced_blobs_are_collected() {
    let server = Server::start_with(&[
        "--media-upload-timeout-secs",
        "3",
        "--media-grace-secs",
        "3",
        "--media-gc-interval-ms",
        "100",
        "--media-max-bytes",
        "100000",
        "--media-quota-bytes",
        "100000",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let kept = content(30_000, 12);
    let dropped = content(30_000, 13);
    let abandoned = content(30_000, 14);
    let kept_id = upload(&mut alice, &kept);
    let dropped_id = upload(&mut alice, &dropped);
    let t = direct(&mut alice, b.user);
    assert!(matches!(
        send_media(&mut alice, t, &kept_id),
        Frame::Sent(_)
    ));
    let Frame::MediaUpload(up) = begin(&mut alice, &abandoned) else {
        panic!()
    };
    chunks(&mut alice, up.upload, &abandoned, 0, 10_000, 5_000);
    assert_eq!((blobs(&server).len(), parts(&server).len()), (2, 1));
    // 90,000 of 100,000 used: a 30,000 upload is over the quota until the collector runs.
    assert_eq!(
        error_code(&begin(&mut alice, &content(30_000, 15))),
        ErrorCode::MediaQuotaExceeded
    );

    assert!(
        eventually(Duration::from_secs(15), || blobs(&server).len() == 1
            && parts(&server).is_empty()),
        "blobs {:?}, parts {:?}",
        blobs(&server),
        parts(&server)
    );
    assert_eq!(
        error_code(&get(&mut alice, &dropped_id, 0, 10)),
        ErrorCode::UnknownMedia
    );
    assert_eq!(download(&mut bob, &kept_id, 10_000), kept);
    let reply = alice.request(MediaChunk {
        upload: up.upload,
        offset: 10_000,
        data: Bytes::copy_from_slice(&abandoned[10_000..11_000]),
    });
    assert_eq!(error_code(&reply), ErrorCode::UnknownMedia, "{reply:?}");
    let metrics = server.metrics();
    for name in [
        "courier_media_collected_parts_total",
        "courier_media_collected_blobs_total",
    ] {
        assert_eq!(Server::metric_sum(&metrics, name), 1.0, "{name}");
    }
    // The collected blob no longer counts against the quota (30,000 stored now).
    assert!(matches!(
        begin(&mut alice, &content(30_000, 15)),
        Frame::MediaUpload(_)
    ));
}

fn cli(config: &Path, server: &Server, args: &[&str]) -> std::process::Output {
    std::process::Command::new(util::cli_bin())
        .env("COURIER_CONFIG", config)
        .env("COURIER_SERVER", server.addr.to_string())
        .env_remove("COURIER_PASSWORD")
        .args(server.client_args())
        .args(args)
        .output()
        .expect("run courier-cli")
}

fn cli_ok(config: &Path, server: &Server, args: &[&str]) -> String {
    let out = cli(config, server, args);
    assert!(
        out.status.success(),
        "courier-cli {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn cli_uploads_a_file_to_a_user_and_downloads_it_continuing_a_partial_file() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = |name: &str| dir.path().join(format!("{name}.toml"));
    for name in ["alice", "bob", "eve"] {
        let password = format!("{name}-password");
        cli_ok(
            &cfg(name),
            &server,
            &["register", name, "--password", &password],
        );
    }
    let data = content(150_000, 16);
    let file = dir.path().join("photo.bin");
    std::fs::write(&file, &data).unwrap();
    let out = cli_ok(
        &cfg("alice"),
        &server,
        &["--json", "upload", file.to_str().unwrap(), "--to", "bob"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = v["media"].as_str().unwrap().to_string();
    assert_eq!(id, blake3::hash(&data).to_hex().as_str());
    assert!(v["message"].as_u64().is_some(), "{out}");
    // Bob's history names the media and its caption, and how to download it.
    let thread = v["thread"].as_u64().unwrap().to_string();
    let history = cli_ok(
        &cfg("bob"),
        &server,
        &["--json", "history", "--thread", &thread],
    );
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["media"].as_str(), last["caption"].as_str()),
        (Some(&id[..]), Some("photo.bin")),
        "{last}"
    );
    let text = cli_ok(&cfg("bob"), &server, &["history", "--thread", &thread]);
    assert!(
        text.contains(&format!("courier-cli download {id} FILE --thread {thread}")),
        "{text}"
    );
    // Bob's earlier attempt stopped after 40,000 bytes: the download continues from there.
    let got = dir.path().join("got.bin");
    std::fs::write(&got, &data[..40_000]).unwrap();
    cli_ok(
        &cfg("bob"),
        &server,
        &["download", &id, got.to_str().unwrap(), "--thread", &thread],
    );
    assert!(
        std::fs::read(&got).unwrap() == data,
        "downloaded bytes differ"
    );
    // Eve may not: one clear line, and no file content.
    let eve_file = dir.path().join("eve.bin");
    let out = cli(
        &cfg("eve"),
        &server,
        &["download", &id, eve_file.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may not read it"), "{err}");
    assert_eq!(
        std::fs::metadata(&eve_file).map(|m| m.len()).unwrap_or(0),
        0
    );
}

#[test]
fn the_client_library_paces_an_upload_and_a_download_through_the_rate_limit() {
    // 20 requests/s, bursts of 40: a 2 MB upload is 62 chunks, its download 35 ranges.
    // Before: the library gave up at the first RATE_LIMITED chunk.
    let server = Server::start_with(&["--rate-limit", "20"]);
    let connect = |handle: &str| {
        let c = courier_client::Client::connect(
            server.addr,
            courier_client::ClientConfig::default().with_encryption(server.encryption()),
        )
        .expect("connect");
        c.register(handle, "correct-horse-battery")
            .expect("register");
        c
    };
    let alice = connect("alice");
    let data = content(2_000_000, 17);
    let media = alice
        .upload_media("application/octet-stream", &data)
        .unwrap();
    assert_eq!(&media.media[..], blake3::hash(&data).as_bytes());
    assert_eq!(alice.download_media(&media.media, 0).unwrap(), data);
}

#[test]
fn stored_media_survives_a_restart_and_an_interrupted_upload_starts_over() {
    let mut server = Server::start();
    let (mut alice, ok) = server.user("alice");
    let (_, b) = server.user("bob");
    let stored = content(80_000, 18);
    let media = upload(&mut alice, &stored);
    let t = direct(&mut alice, b.user);
    assert!(matches!(send_media(&mut alice, t, &media), Frame::Sent(_)));
    let partial = content(80_000, 19);
    let Frame::MediaUpload(up) = begin(&mut alice, &partial) else {
        panic!()
    };
    chunks(&mut alice, up.upload, &partial, 0, 30_000, 10_000);
    drop(alice);
    server.restart();

    let mut alice = server.resumed(&ok.token);
    assert_eq!(download(&mut alice, &media, 60_000), stored);
    // The hasher's state is gone with the process: the upload starts again from 0, and the
    // part left behind is reused from scratch, not appended to.
    let Frame::MediaUpload(again) = begin(&mut alice, &partial) else {
        panic!()
    };
    assert_eq!(again.offset, 0);
    chunks(
        &mut alice,
        again.upload,
        &partial,
        0,
        partial.len(),
        again.chunk_max as usize,
    );
    let Frame::MediaRef(r) = alice.request(MediaCommit {
        upload: again.upload,
    }) else {
        panic!()
    };
    assert_eq!(download(&mut alice, &r.media, 60_000), partial);
}

#[test]
fn taking_on_stored_content_counts_against_the_quota() {
    // Bob may read what Alice sent him, so his MEDIA_BEGIN of it completes at once; it still
    // becomes his to keep, so it must fit his quota. Before: not checked at MEDIA_BEGIN, and
    // the commit charged it past the quota.
    let server = Server::start_with(&[
        "--media-max-bytes",
        "50000",
        "--media-quota-bytes",
        "120000",
    ]);
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let shared = content(50_000, 20);
    let media = upload(&mut alice, &shared);
    let t = direct(&mut alice, b.user);
    assert!(matches!(send_media(&mut alice, t, &media), Frame::Sent(_)));
    upload(&mut bob, &content(50_000, 21));
    upload(&mut bob, &content(50_000, 22));
    let reply = begin(&mut bob, &shared);
    assert_eq!(
        error_code(&reply),
        ErrorCode::MediaQuotaExceeded,
        "{reply:?}"
    );
    // Alice owns it already: taking it on again costs her nothing.
    assert!(matches!(begin(&mut alice, &shared), Frame::MediaUpload(u) if u.offset == 50_000));
}
