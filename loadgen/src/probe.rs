//! The `probe` scenario: does a heavy read stall a shard's other connections?
//!
//! Four users on blocking sockets, each on its own thread of this process:
//!
//! ```text
//!  prober      PING at a fixed rate, latency from the *scheduled* send time (a stall that
//!              delays later pings counts against every one of them: no coordinated omission)
//!  downloader  MEDIA_GET of one media file (uploaded in setup) in max-size chunks, from offset
//!              0 to the end, over and over
//!  lister      LIST_THREADS through all its threads (created in setup), page by page, over
//!              and over
//!  poster      setup only: leaves `--unread` messages in every thread, so pages count unread
//! ```
//!
//! `--probe-only` is the baseline: the same setup, but only the prober runs.
//!
//! Run the server with `--shards 1` to put all of them on one shard (the worst case; with more
//! shards the kernel decides who shares a shard). The report is its own JSON object
//! ([`ProbeReport`]); it is not a delivery run and has no loss verification.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_protocol::session::Encryption;
use courier_protocol::{self as proto, Frame};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::blocking::{unexpected, SessionConn};
use crate::cli::{Common, ProbeArgs};
use crate::hist::{new_histogram, record_ns, Summary};
use crate::users::{read_users_file, register_users, token_bytes, UserRecord};
use crate::{Error, Result};

/// Most requests written before their answers are read, during setup.
const SETUP_WINDOW: usize = 256;

/// What a probe run measured. Latencies in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeReport {
    pub scenario: String,
    /// PING → PONG, from the scheduled send time.
    pub probe_latency_us: Summary,
    pub probes: u64,
    /// One MEDIA_GET round trip.
    pub media_get_us: Summary,
    /// Whole downloads of the media file completed in the window.
    pub media_downloads: u64,
    pub media_bytes_per_sec: f64,
    /// One LIST_THREADS round trip.
    pub list_page_us: Summary,
    pub list_pages: u64,
    /// Complete walks through every thread.
    pub list_walks: u64,
    /// ERROR_REPLY answers to the traffic (none expected).
    pub errors: u64,
    pub setup_secs: f64,
    pub traffic_secs: f64,
}

impl ProbeReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }
}

/// How long one answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects and resumes as `user`.
fn open(server: SocketAddr, encryption: Encryption, user: &UserRecord) -> Result<SessionConn> {
    let mut conn =
        SessionConn::connect(server, encryption, "courier-loadgen probe", ANSWER_TIMEOUT)?;
    conn.authenticate(
        proto::Resume {
            token: token_bytes(user),
        }
        .into(),
    )?;
    Ok(conn)
}

/// Runs the probe scenario.
pub fn run(c: &Common, args: &ProbeArgs) -> Result<ProbeReport> {
    let server = *c
        .servers
        .first()
        .ok_or_else(|| Error::Args("give --server ADDR".into()))?;
    if args.threads == 0 || args.media_bytes == 0 {
        return Err(Error::Args(
            "--threads and --media-bytes must be above 0".into(),
        ));
    }
    let encryption = crate::runner::encryption(c)?;
    let started = Instant::now();
    let users = match (&c.users, c.register) {
        (Some(path), _) => read_users_file(path)?,
        (None, true) => {
            let run: u32 = rand::random();
            register_users(4, server, encryption, &format!("pr{run:08x}_"), 4)?
        }
        (None, false) => return Err(Error::NoUsers),
    };
    if users.len() < 4 {
        return Err(Error::NotEnoughUsers {
            needed: 4,
            have: users.len(),
        });
    }
    let (prober_user, downloader_user, lister_user, poster_user) =
        (&users[0], &users[1], &users[2], &users[3]);
    let mut downloader = open(server, encryption, downloader_user)?;
    let mut lister = open(server, encryption, lister_user)?;
    let mut poster = open(server, encryption, poster_user)?;
    let mut prober = open(server, encryption, prober_user)?;

    let media = upload(&mut downloader, args.media_bytes)?;
    setup_threads(&mut lister, &mut poster, poster_user.id, args, c.body_size)?;
    drop(poster);
    let setup_secs = started.elapsed().as_secs_f64();
    if !c.quiet {
        eprintln!(
            "probe: setup done in {setup_secs:.1} s ({} threads, {} bytes of media)",
            args.threads, args.media_bytes
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let duration = Duration::from_secs_f64(args.duration);
    let traffic_start = Instant::now();
    let heavy = !args.probe_only;
    let (dl, ls, pr) = std::thread::scope(|s| {
        let dl = s.spawn(|| match heavy {
            true => download_loop(&mut downloader, &media, args.media_bytes, &stop),
            false => Ok((new_histogram(), 0, 0, 0)),
        });
        let ls = s.spawn(|| match heavy {
            true => list_loop(&mut lister, args.list_limit, &stop),
            false => Ok((new_histogram(), 0, 0, 0)),
        });
        let pr = s.spawn(|| probe_loop(&mut prober, args.probe_rate, duration));
        let pr = pr.join().expect("probe thread panicked");
        stop.store(true, Ordering::Relaxed);
        (
            dl.join().expect("download thread panicked"),
            ls.join().expect("list thread panicked"),
            pr,
        )
    });
    let traffic_secs = traffic_start.elapsed().as_secs_f64();
    let (probe_h, probe_errors) = pr?;
    let (media_h, downloads, bytes, media_errors) = dl?;
    let (list_h, pages, walks, list_errors) = ls?;
    Ok(ProbeReport {
        scenario: "probe".into(),
        probe_latency_us: Summary::of(&probe_h),
        probes: probe_h.len(),
        media_get_us: Summary::of(&media_h),
        media_downloads: downloads,
        media_bytes_per_sec: bytes as f64 / traffic_secs,
        list_page_us: Summary::of(&list_h),
        list_pages: pages,
        list_walks: walks,
        errors: probe_errors + media_errors + list_errors,
        setup_secs,
        traffic_secs,
    })
}

/// Uploads `len` bytes of media (byte `i` is `i % 251`); returns its id. Content the server
/// already has (an earlier run on the same data directory) is not sent again.
fn upload(conn: &mut SessionConn, len: u64) -> Result<Bytes> {
    let content: Bytes = (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let begin = proto::MediaBegin {
        total_len: len,
        mime: "application/octet-stream".into(),
        hash: Bytes::copy_from_slice(blake3::hash(&content).as_bytes()),
    };
    let (upload, chunk_max, mut offset) = match conn.call(begin.into())? {
        Frame::MediaUpload(u) => (u.upload, u.chunk_max as u64, u.offset),
        other => return Err(unexpected("MediaBegin", other)),
    };
    let mut frames = Vec::new();
    while offset < len {
        let n = chunk_max.min(len - offset);
        frames.push(
            proto::MediaChunk {
                upload,
                offset,
                data: content.slice(offset as usize..(offset + n) as usize),
            }
            .into(),
        );
        offset += n;
    }
    for answer in conn.pipeline(frames, SETUP_WINDOW)? {
        if !matches!(answer, Frame::Done(_)) {
            return Err(unexpected("MediaChunk", answer));
        }
    }
    match conn.call(proto::MediaCommit { upload }.into())? {
        Frame::MediaRef(r) => Ok(r.media),
        other => Err(unexpected("MediaCommit", other)),
    }
}

/// Creates `--threads` groups of the lister and the poster; the poster sends `--unread`
/// messages into each.
fn setup_threads(
    lister: &mut SessionConn,
    poster: &mut SessionConn,
    poster_id: u64,
    a: &ProbeArgs,
    body_size: usize,
) -> Result<()> {
    let creates = (0..a.threads)
        .map(|i| {
            proto::CreateGroup {
                name: format!("probe {i}"),
                members: vec![poster_id],
            }
            .into()
        })
        .collect();
    let mut threads = Vec::with_capacity(a.threads);
    for answer in lister.pipeline(creates, SETUP_WINDOW)? {
        match answer {
            Frame::ThreadInfo(t) => threads.push(t.thread.id),
            other => return Err(unexpected("CreateGroup", other)),
        }
    }
    let body = Bytes::from(vec![b'x'; body_size]);
    let mut client_msg_id = rand::random::<u32>() as u64 * 1_000_000;
    let mut sends = Vec::with_capacity(a.threads * a.unread);
    for _ in 0..a.unread {
        for &thread in &threads {
            client_msg_id += 1;
            sends.push(
                proto::Send {
                    thread,
                    client_msg_id,
                    kind: proto::MessageKind::Text,
                    body: body.clone(),
                    reply_to: 0,
                }
                .into(),
            );
        }
    }
    for answer in poster.pipeline(sends, SETUP_WINDOW)? {
        if !matches!(answer, Frame::Sent(_)) {
            return Err(unexpected("Send", answer));
        }
    }
    Ok(())
}

/// PINGs at `rate` per second for `duration`; latency counted from each ping's scheduled time.
fn probe_loop(
    conn: &mut SessionConn,
    rate: f64,
    duration: Duration,
) -> Result<(Histogram<u64>, u64)> {
    let mut h = new_histogram();
    let mut errors = 0;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = Instant::now();
    let mut n: u32 = 0;
    loop {
        let due = start + interval * n;
        if due.duration_since(start) >= duration {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        match conn.call(proto::Ping { nonce: n as u64 }.into())? {
            Frame::Pong(_) => record_ns(&mut h, due.elapsed().as_nanos() as u64),
            _ => errors += 1,
        }
        n += 1;
    }
    Ok((h, errors))
}

type LoopResult = Result<(Histogram<u64>, u64, u64, u64)>;

/// Downloads the media from start to end until `stop`; returns (latencies, whole downloads,
/// bytes, errors).
fn download_loop(
    conn: &mut SessionConn,
    media: &Bytes,
    total: u64,
    stop: &AtomicBool,
) -> LoopResult {
    let mut h = new_histogram();
    let (mut downloads, mut bytes, mut errors, mut offset) = (0, 0, 0, 0);
    while !stop.load(Ordering::Relaxed) {
        let get = proto::MediaGet {
            thread: 0,
            media: media.clone(),
            offset,
            max_len: u32::MAX,
        };
        let t = Instant::now();
        let answer = conn.call(get.into())?;
        record_ns(&mut h, t.elapsed().as_nanos() as u64);
        match answer {
            Frame::MediaData(d) if !d.data.is_empty() => {
                offset += d.data.len() as u64;
                bytes += d.data.len() as u64;
                if offset >= total {
                    downloads += 1;
                    offset = 0;
                }
            }
            _ => {
                errors += 1;
                offset = 0;
            }
        }
    }
    Ok((h, downloads, bytes, errors))
}

/// Pages through every thread until `stop`; returns (latencies, pages, walks, errors).
fn list_loop(conn: &mut SessionConn, limit: u16, stop: &AtomicBool) -> LoopResult {
    let mut h = new_histogram();
    let (mut pages, mut walks, mut errors) = (0, 0, 0);
    let (mut before_msg_id, mut before_thread) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let list = proto::ListThreads {
            before_msg_id,
            before_thread,
            limit,
        };
        let t = Instant::now();
        let answer = conn.call(list.into())?;
        record_ns(&mut h, t.elapsed().as_nanos() as u64);
        pages += 1;
        match answer {
            Frame::ThreadList(l) => match l.threads.last() {
                Some(last) if l.more => {
                    (before_msg_id, before_thread) = (last.last_msg_id, last.id)
                }
                _ => {
                    walks += 1;
                    (before_msg_id, before_thread) = (0, 0);
                }
            },
            _ => {
                errors += 1;
                (before_msg_id, before_thread) = (0, 0);
            }
        }
    }
    Ok((h, pages, walks, errors))
}
