//! `courier-loadgen` against a real `courier serve` (RocksDB in a temp dir): every scenario,
//! small and short, must lose nothing, duplicate nothing and report the documented keys; a
//! provisioned `connect` run measures memory per connection.
//!
//! Workers run as threads (`--in-process`): the root package's tests do not build the
//! `courier-loadgen` binary. Every run is a few seconds and bounded by its own timeouts
//! (`--settle-secs`, the loadgen's connect and collect deadlines); the whole file takes well
//! under a minute.

mod util;

use std::path::Path;

use clap::Parser;
use courier_loadgen::{run, Cli, Report};
use util::Server;

/// Server flags for these runs: unthrottled senders keep 16 SENDs in flight each, far above
/// the default 500 requests/s per connection, which is a production setting and not what
/// these tests are about. Encrypted, as by default: the loadgen pins the key the server printed
/// (`--register` included).
const SERVER_ARGS: &[&str] = &["--rate-limit", "100000", "--fsync", "batch"];

fn loadgen(addr: std::net::SocketAddr, users: Option<&Path>, scenario: &[&str]) -> Report {
    let mut args = vec![
        "courier-loadgen".to_string(),
        "--quiet".into(),
        "--in-process".into(),
        "--server".into(),
        addr.to_string(),
        "--settle-secs".into(),
        "3".into(),
    ];
    args.extend(util::client_args_for(addr));
    match users {
        Some(path) => args.extend(["--users".into(), path.display().to_string()]),
        None => args.push("--register".into()),
    }
    args.extend(scenario.iter().map(|s| s.to_string()));
    run(&Cli::try_parse_from(args).expect("valid loadgen arguments")).expect("loadgen run")
}

fn assert_clean(r: &Report) {
    assert_eq!((r.lost, r.duplicates, r.out_of_order), (0, 0, 0), "{r:#?}");
    assert!(r.passed, "{r:#?}");
    assert_eq!(r.connect_failures, 0, "{r:#?}");
    assert_eq!(r.send_errors, 0, "{r:#?}");
    assert_eq!(r.setup_errors, 0, "{r:#?}");
    assert!(r.acked > 0 && r.acked <= r.sent, "{r:#?}");
    assert_keys(r);
}

/// The keys issue 5 promises in the JSON report, with the four latency quantiles.
fn assert_keys(r: &Report) {
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).expect("the report is JSON");
    let missing = courier_loadgen::missing_keys(&v);
    assert!(missing.is_empty(), "missing {missing:?} in {v}");
}

#[test]
fn loadgen_chat_with_registered_users_loses_nothing() {
    let server = Server::start_with(SERVER_ARGS);
    let r = loadgen(
        server.addr,
        None,
        &["chat", "--pairs", "5", "--duration", "2", "--receipts"],
    );
    assert_clean(&r);
    assert_eq!(r.scenario, "chat");
    assert!(r.delivered >= r.acked, "{r:#?}");
    assert!(r.ack_latency_us.p50 > 0 && r.delivery_latency_us.p50 > 0);
}

#[test]
fn loadgen_chat_at_a_fixed_rate() {
    let server = Server::start_with(SERVER_ARGS);
    let r = loadgen(
        server.addr,
        None,
        &["chat", "--pairs", "4", "--rate", "200", "--duration", "2"],
    );
    assert_clean(&r);
    assert!((300..=440).contains(&r.sent), "sent {}", r.sent);
}

#[test]
fn loadgen_group_delivers_to_every_member() {
    let server = Server::start_with(SERVER_ARGS);
    let r = loadgen(
        server.addr,
        None,
        &[
            "group",
            "--groups",
            "2",
            "--members",
            "12",
            "--chunk",
            "5",
            "--rate",
            "50",
            "--duration",
            "2",
        ],
    );
    assert_clean(&r);
    assert!(r.delivered >= r.acked * 11, "{r:#?}");
}

#[test]
fn loadgen_storm_reconnects_everyone_and_loses_nothing() {
    let server = Server::start_with(SERVER_ARGS);
    let r = loadgen(
        server.addr,
        None,
        &[
            "storm",
            "--connections",
            "40",
            "--rate",
            "100",
            "--duration",
            "4",
        ],
    );
    assert_clean(&r);
    let storm = r.storm.expect("storm report");
    assert_eq!(storm.dropped, 40, "{r:#?}");
    assert!(storm.recover_ms.is_some(), "{r:#?}");
}

#[test]
fn loadgen_mixed_profile_loses_nothing() {
    let server = Server::start_with(SERVER_ARGS);
    let r = loadgen(
        server.addr,
        None,
        &[
            "mixed",
            "--connections",
            "40",
            "--duration",
            "4",
            "--rate",
            "40",
            "--reconnects-per-sec",
            "2",
        ],
    );
    assert_clean(&r);
    assert!(r.reconnects > 0, "{r:#?}");
}

#[test]
fn loadgen_connect_provisioned_measures_memory_per_connection() {
    let mut server = Server::start_with(SERVER_ARGS);
    let users = server.provision(2_000);
    let pid = server.pid().expect("server running").to_string();
    let r = loadgen(
        server.addr,
        Some(&users),
        &[
            "connect",
            "--connections",
            "2000",
            "--rate",
            "0",
            "--hold",
            "1",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!((r.connected, r.connect_failures), (2_000, 0), "{r:#?}");
    assert_eq!((r.lost, r.duplicates), (0, 0), "{r:#?}");
    assert_keys(&r);
    let rss = r
        .server_rss_bytes_per_conn
        .expect("server RSS per connection");
    // BENCHMARKS.md has the real figure; this only catches gross regressions.
    assert!(rss < 64.0 * 1024.0, "server RSS per connection {rss} bytes");
    assert!(r.kernel_bytes_per_socket.is_some(), "{r:#?}");
}

#[test]
fn loadgen_chat_provisioned_with_resume() {
    let mut server = Server::start_with(SERVER_ARGS);
    let users = server.provision(200);
    let r = loadgen(
        server.addr,
        Some(&users),
        &["chat", "--pairs", "100", "--window", "8", "--duration", "2"],
    );
    assert_clean(&r);
    assert_eq!(r.connected, 200);
}

/// Regression: a second `chat` run against the same server and users reported `lost` for every
/// message. Its client message ids restarted at 1, so the server (rightly) took each SEND for a
/// retry of the first run's, answered with the old message and pushed nothing.
#[test]
fn loadgen_chat_twice_with_the_same_users_loses_nothing() {
    let mut server = Server::start_with(SERVER_ARGS);
    let users = server.provision(20);
    for run in 1..=2 {
        let r = loadgen(
            server.addr,
            Some(&users),
            &["chat", "--pairs", "10", "--window", "4", "--duration", "2"],
        );
        assert_clean(&r);
        assert_eq!(r.stale_acks, 0, "run {run}: {r:#?}");
    }
}
