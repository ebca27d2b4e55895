//! End-to-end runs of every scenario against the in-process fake server, with workers as
//! threads and as child processes, plus injected faults the verifier must catch.

use std::path::PathBuf;
use std::process::Command as Process;

use clap::Parser;
use courier_fake::{token_for, FakeServer, Faults, MessageIds, Options};
use courier_loadgen::users::{format_user, UserRecord};
use courier_loadgen::{run, Cli, Report};

struct Fixture {
    server: FakeServer,
    users: PathBuf,
    _dir: TempDir,
}

/// A scratch directory removed on drop (no tempfile dependency for one directory).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An encrypted fake, as the real server is by default; the loadgen pins its key
/// ([`Fixture::transport`]).
fn fixture(faults: Faults, users: usize) -> Fixture {
    let key = courier_protocol::noise::Keypair::generate().unwrap();
    fixture_with(faults, users, Some(key))
}

fn fixture_with(
    faults: Faults,
    users: usize,
    key: Option<courier_protocol::noise::Keypair>,
) -> Fixture {
    let options = Options {
        faults,
        // The loadgen syncs from the time its run started, as the real server's ids are.
        message_ids: MessageIds::Clock,
        ..Options::default()
    };
    let server = FakeServer::with_options_and_key(options, key);
    let dir = std::env::temp_dir().join(format!(
        "courier-loadgen-test-{}-{}",
        std::process::id(),
        server.addr.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("users.txt");
    write_users_file(users, &path);
    Fixture {
        server,
        users: path,
        _dir: TempDir(dir),
    }
}

/// Users 1..=n as `courier admin provision` lists them; the fake accepts their tokens by
/// RESUME without knowing them.
fn write_users_file(n: usize, path: &std::path::Path) {
    let text: String = (1..=n as u64)
        .map(|id| UserRecord {
            id,
            handle: format!("load{id}"),
            token: token_for(id).to_vec(),
        })
        .map(|u| format_user(&u) + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
}

impl Fixture {
    /// `--server-key HEX` for an encrypted fake, `--insecure-plaintext` for a plaintext one.
    fn transport(&self) -> Vec<String> {
        match self.server.key {
            Some(key) => vec!["--server-key".into(), key.to_string()],
            None => vec!["--insecure-plaintext".into()],
        }
    }
}

fn cli(f: &Fixture, extra: &[&str]) -> Cli {
    let mut args = vec![
        "courier-loadgen".to_string(),
        "--quiet".into(),
        "--in-process".into(),
        "--server".into(),
        f.server.addr.to_string(),
        "--users".into(),
        f.users.display().to_string(),
        "--settle-secs".into(),
        "3".into(),
    ];
    args.extend(f.transport());
    args.extend(extra.iter().map(|s| s.to_string()));
    Cli::try_parse_from(args).unwrap()
}

fn assert_clean(r: &Report) {
    assert_eq!((r.lost, r.duplicates, r.out_of_order), (0, 0, 0), "{r:#?}");
    assert!(r.passed);
    assert_eq!(r.connect_failures, 0, "{r:#?}");
    assert_eq!(r.send_errors, 0, "{r:#?}");
    assert!(r.acked > 0 && r.acked <= r.sent, "{r:#?}");
}

#[test]
fn chat_two_pairs_for_one_second_loses_nothing() {
    let f = fixture(Faults::default(), 4);
    let r = run(&cli(
        &f,
        &["chat", "--pairs", "2", "--duration", "1", "--workers", "2"],
    ))
    .unwrap();
    assert_clean(&r);
    assert_eq!(r.scenario, "chat");
    assert_eq!((r.connections, r.connected, r.workers), (4, 4, 2));
    // Unthrottled with a window: every acked message reached its one recipient by push.
    assert!(r.delivered >= r.acked);
    assert_eq!(r.ack_latency_us.count, r.acked);
    assert!(r.delivery_latency_us.count >= r.acked);
    assert!(r.ack_latency_us.p50 > 0 && r.ack_latency_us.max >= r.ack_latency_us.p999);
    assert!(r.delivered_per_sec > 0.0);
    assert_eq!(r.connect_latency_us.count, 4);
    assert_eq!(r.server_rss_bytes_per_conn, None);
}

#[test]
fn chat_at_a_fixed_rate_sends_about_that_many() {
    let f = fixture(Faults::default(), 6);
    let r = run(&cli(
        &f,
        &[
            "chat",
            "--pairs",
            "3",
            "--rate",
            "200",
            "--duration",
            "2",
            "--receipts",
        ],
    ))
    .unwrap();
    assert_clean(&r);
    assert!(
        (300..=440).contains(&r.sent),
        "sent {} at 200/s for 2 s",
        r.sent
    );
    assert_eq!(r.acked, r.sent);
}

#[test]
fn group_members_added_in_chunks_all_receive() {
    let f = fixture(Faults::default(), 10);
    let r = run(&cli(
        &f,
        &[
            "group",
            "--groups",
            "2",
            "--members",
            "5",
            "--chunk",
            "2",
            "--rate",
            "100",
            "--duration",
            "1",
            "--publishers",
            "2",
        ],
    ))
    .unwrap();
    assert_clean(&r);
    assert_eq!(r.setup_errors, 0);
    // Every acked message reaches the four other members.
    assert!(r.delivered >= r.acked * 4, "{r:#?}");
}

#[test]
fn storm_drops_everything_reconnects_and_loses_nothing() {
    let f = fixture(Faults::default(), 20);
    let r = run(&cli(
        &f,
        &[
            "storm",
            "--connections",
            "20",
            "--rate",
            "200",
            "--duration",
            "2",
        ],
    ))
    .unwrap();
    assert_clean(&r);
    let storm = r.storm.expect("storm report");
    assert_eq!(storm.dropped, 20);
    assert!(storm.recover_ms.is_some(), "{r:#?}");
    assert!(r.reconnects >= 20);
}

#[test]
fn mixed_profile_with_reconnects_loses_nothing() {
    let f = fixture(Faults::default(), 24);
    let r = run(&cli(
        &f,
        &[
            "mixed",
            "--connections",
            "24",
            "--duration",
            "3",
            "--rate",
            "60",
            "--reconnects-per-sec",
            "4",
            "--workers",
            "2",
        ],
    ))
    .unwrap();
    assert_clean(&r);
    assert_eq!(r.setup_errors, 0, "{r:#?}");
    assert!(r.reconnects > 0, "{r:#?}");
}

#[test]
fn connect_measures_server_and_kernel_memory_per_connection() {
    let f = fixture(Faults::default(), 50);
    let pid = f.server.pid().to_string();
    let r = run(&cli(
        &f,
        &[
            "connect",
            "--connections",
            "50",
            "--rate",
            "0",
            "--hold",
            "0.5",
            "--server-pid",
            &pid,
        ],
    ))
    .unwrap();
    assert_eq!((r.connected, r.connect_failures), (50, 0));
    assert!(r.connect_rate_per_sec > 0.0);
    assert!(r.server_rss_bytes_per_conn.is_some());
    assert!(r.kernel_bytes_per_socket.is_some());
    assert!(r.passed);
}

#[test]
fn pushes_lost_by_the_server_are_recovered_by_the_final_sync() {
    let f = fixture(
        Faults {
            skip_push_every: 7,
            ..Default::default()
        },
        4,
    );
    let r = run(&cli(
        &f,
        &["chat", "--pairs", "2", "--rate", "100", "--duration", "1"],
    ))
    .unwrap();
    assert_clean(&r);
    assert!(r.recovered_by_sync > 0, "{r:#?}");
}

/// Two chat pairs at 100 msgs/s for a second against a fake server with `faults`.
fn faulty_chat(faults: Faults) -> Report {
    let f = fixture(faults, 4);
    run(&cli(
        &f,
        &[
            "chat",
            "--pairs",
            "2",
            "--rate",
            "100",
            "--duration",
            "1",
            "--settle-secs",
            "0.5",
        ],
    ))
    .unwrap()
}

#[test]
fn duplicate_pushes_fail_the_run() {
    let r = faulty_chat(Faults {
        duplicate_push_every: 5,
        ..Default::default()
    });
    assert!(r.duplicates > 0);
    assert_eq!(r.lost, 0);
    assert!(!r.passed);
}

#[test]
fn acked_but_never_stored_messages_are_lost() {
    let r = faulty_chat(Faults {
        forget_every: 10,
        ..Default::default()
    });
    assert!(r.lost > 0, "{r:#?}");
    assert!(!r.passed);
}

/// A SENT naming a message from before the run is the server taking a SEND for a retry of an
/// older one: reported as a stale ack, which fails the run, and not as a loss.
#[test]
fn sends_answered_with_old_messages_are_stale_acks_not_losses() {
    let r = faulty_chat(Faults {
        stale_ack_every: 10,
        ..Default::default()
    });
    assert!(r.stale_acks > 0, "{r:#?}");
    assert_eq!(r.lost, 0, "{r:#?}");
    assert!(!r.passed);
}

#[test]
fn register_mode_creates_its_own_users() {
    // Plaintext: --register (users.rs) does not speak the encrypted transport yet.
    let f = fixture_with(Faults::default(), 0, None);
    let args = [
        "courier-loadgen",
        "--quiet",
        "--in-process",
        "--insecure-plaintext",
        "--register",
        "--server",
        &f.server.addr.to_string(),
        "chat",
        "--pairs",
        "2",
        "--duration",
        "0.5",
    ];
    let r = run(&Cli::try_parse_from(args).unwrap()).unwrap();
    assert_clean(&r);
}

#[test]
fn missing_users_are_an_error_that_says_what_to_do() {
    let f = fixture(Faults::default(), 3);
    let err = run(&cli(&f, &["chat", "--pairs", "2"])).unwrap_err();
    assert!(err.to_string().contains("provision"), "{err}");
}

/// The binary with worker processes: JSON on stdout and in --json, exit status by verdict.
#[test]
fn binary_with_worker_processes_prints_json_and_exits_by_verdict() {
    let exe = env!("CARGO_BIN_EXE_courier-loadgen");
    let f = fixture(Faults::default(), 8);
    let json = f.users.with_file_name("report.json");
    let out = Process::new(exe)
        .args(["--quiet", "--server", &f.server.addr.to_string(), "--users"])
        .arg(&f.users)
        .args(f.transport())
        .args(["--json"])
        .arg(&json)
        .args([
            "chat",
            "--pairs",
            "4",
            "--duration",
            "1",
            "--workers",
            "2",
            "--source-ips",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Report = serde_json::from_slice(&out.stdout).unwrap();
    let written: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(printed, written);
    assert_clean(&printed);
    assert_eq!((printed.workers, printed.source_ips), (2, 3));
    assert!(printed.loadgen_rss_bytes_per_conn.is_some());

    let bad = fixture(
        Faults {
            duplicate_push_every: 3,
            ..Default::default()
        },
        4,
    );
    let out = Process::new(exe)
        .args([
            "--quiet",
            "--server",
            &bad.server.addr.to_string(),
            "--users",
        ])
        .arg(&bad.users)
        .args(bad.transport())
        .args([
            "chat",
            "--pairs",
            "2",
            "--rate",
            "100",
            "--duration",
            "1",
            "--workers",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A few thousand connections over worker processes and several source addresses. Ignored by
/// default (the fake server spends a thread per connection); run with `--ignored`.
#[test]
#[ignore]
fn thousands_of_connections_over_processes_and_sources() {
    let exe = env!("CARGO_BIN_EXE_courier-loadgen");
    let f = fixture(Faults::default(), 4000);
    let out = Process::new(exe)
        .args(["--server", &f.server.addr.to_string(), "--users"])
        .arg(&f.users)
        .args(f.transport())
        .args(["--conns-per-worker", "1500", "--source-ips", "4"])
        .args([
            "chat",
            "--pairs",
            "2000",
            "--rate",
            "4000",
            "--duration",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let r: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((r.connected, r.workers, r.source_ips), (4000, 3, 4));
    assert_clean(&r);
}
