//! Loadgen scenarios against the real server. Not compiled yet: move to the root package's
//! `tests/` once `tests/util` exists. Assumed harness API (adapt if it differs):
//!
//! - `util::Server::start() -> Server` starts `courier serve --listen 127.0.0.1:0-ish
//!   --data-dir <temp>` and waits until it accepts; `server.addr: SocketAddr`,
//!   `server.data_dir: PathBuf`, `server.pid() -> u32`; dropping it stops the server.
//! - `util::Server::start_in(dir: &Path) -> Server` does the same on an existing data dir
//!   (needed to provision users while the server is stopped). Where it does not exist yet,
//!   the provisioned tests below say so.
//!
//! Workers run as threads (`--in-process`): the root package's tests do not build the
//! `courier-loadgen` binary. Every run is a few seconds and bounded by its own timeouts.

mod util;

use std::path::Path;
use std::process::Command as Process;

use clap::Parser;
use courier_loadgen::{run, Cli, Report};

fn loadgen(addr: std::net::SocketAddr, users: Option<&Path>, scenario: &[&str]) -> Report {
    let mut args = vec!["courier-loadgen".to_string(), "--quiet".into(), "--in-process".into()];
    args.extend(["--server".into(), addr.to_string(), "--settle-secs".into(), "5".into()]);
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
    assert!(r.acked > 0, "{r:#?}");
}

/// Provisions `n` users into the stopped server's data dir with `courier admin provision`.
fn provision(data_dir: &Path, n: usize) -> std::path::PathBuf {
    let out = data_dir.with_extension("users.txt");
    let status = Process::new(env!("CARGO_BIN_EXE_courier"))
        .args(["admin", "provision", "--data-dir"])
        .arg(data_dir)
        .args(["--users", &n.to_string(), "--prefix", "load", "--out"])
        .arg(&out)
        .status()
        .expect("run courier admin provision");
    assert!(status.success(), "courier admin provision failed");
    out
}

#[test]
fn loadgen_chat_with_registered_users_loses_nothing() {
    let server = util::Server::start();
    let r = loadgen(server.addr, None, &["chat", "--pairs", "5", "--duration", "2", "--receipts"]);
    assert_clean(&r);
    assert!(r.delivered >= r.acked);
    assert!(r.ack_latency_us.p50 > 0);
}

#[test]
fn loadgen_chat_at_a_fixed_rate() {
    let server = util::Server::start();
    let r = loadgen(server.addr, None, &["chat", "--pairs", "4", "--rate", "200", "--duration", "2"]);
    assert_clean(&r);
    assert!((300..=440).contains(&r.sent), "sent {}", r.sent);
}

#[test]
fn loadgen_group_delivers_to_every_member() {
    let server = util::Server::start();
    let r = loadgen(
        server.addr,
        None,
        &["group", "--groups", "2", "--members", "12", "--chunk", "5", "--rate", "50", "--duration", "2"],
    );
    assert_clean(&r);
    assert!(r.delivered >= r.acked * 11, "{r:#?}");
}

#[test]
fn loadgen_storm_reconnects_everyone_and_loses_nothing() {
    let server = util::Server::start();
    let r = loadgen(server.addr, None, &["storm", "--connections", "40", "--rate", "100", "--duration", "4"]);
    assert_clean(&r);
    let storm = r.storm.expect("storm report");
    assert_eq!(storm.dropped, 40);
    assert!(storm.recover_ms.is_some(), "{r:#?}");
}

#[test]
fn loadgen_mixed_profile_loses_nothing() {
    let server = util::Server::start();
    let r = loadgen(
        server.addr,
        None,
        &["mixed", "--connections", "40", "--duration", "5", "--rate", "40", "--reconnects-per-sec", "2"],
    );
    assert_clean(&r);
    assert!(r.reconnects > 0);
}

#[test]
fn loadgen_connect_provisioned_measures_memory_per_connection() {
    let server = util::Server::start();
    let data_dir = server.data_dir.clone();
    drop(server); // provisioning needs the server stopped
    let users = provision(&data_dir, 2_000);
    let server = util::Server::start_in(&data_dir);
    let pid = server.pid().to_string();
    let r = loadgen(
        server.addr,
        Some(&users),
        &["connect", "--connections", "2000", "--rate", "2000", "--hold", "2", "--server-pid", &pid],
    );
    assert_eq!((r.connected, r.connect_failures), (2_000, 0), "{r:#?}");
    let rss = r.server_rss_bytes_per_conn.expect("server RSS per connection");
    // The 10M-connection budget is well under this; this only catches gross regressions.
    assert!(rss < 64.0 * 1024.0, "server RSS per connection {rss} bytes");
    assert!(r.kernel_bytes_per_socket.is_some());
}

#[test]
fn loadgen_chat_provisioned_with_resume() {
    let server = util::Server::start();
    let data_dir = server.data_dir.clone();
    drop(server);
    let users = provision(&data_dir, 200);
    let server = util::Server::start_in(&data_dir);
    let r = loadgen(server.addr, Some(&users), &["chat", "--pairs", "100", "--window", "8", "--duration", "3"]);
    assert_clean(&r);
    assert_eq!(r.connected, 200);
}
