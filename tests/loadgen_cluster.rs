//! `courier-loadgen` against a 3-node encrypted cluster: users provisioned on their home nodes
//! (`courier admin provision --node`), the node list given as the servers' own `--peer`
//! entries, each user connected to its home node with that node's key, and every delivery
//! checked: with `--pairing local` (every thread and its users on one node) and with the
//! default `--pairing any` (threads across nodes: requests forwarded, pushes batched per node).

mod util;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use courier_loadgen::{run, Cli, Report};
use courier_protocol::noise::Keypair;
use util::{write_key, Server, PASSWORD};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn node_key(i: usize) -> Keypair {
    Keypair::from_private([0x51 + i as u8; 32])
}

/// Three nodes n0..n2 with `users` accounts provisioned on their homes; returns the nodes, the
/// `--peer` entries and the users file.
fn cluster(users: usize) -> (Vec<Server>, Vec<String>, PathBuf, tempfile::TempDir) {
    let scratch = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let peers: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "n{i}=127.0.0.1:{}@127.0.0.1:{}#{}",
                ports[i].0,
                ports[i].1,
                node_key(i).public()
            )
        })
        .collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let data: Vec<PathBuf> = dirs.iter().map(|d| d.path().join("data")).collect();
    for (i, dir) in data.iter().enumerate() {
        write_key(dir, &node_key(i));
    }
    let out = scratch.path().join("users.txt");
    let mut provision = Command::new(env!("CARGO_BIN_EXE_courier"));
    provision.args(["admin", "provision"]);
    for (i, dir) in data.iter().enumerate() {
        provision
            .arg("--node")
            .arg(format!("n{i}={}", dir.display()));
    }
    let output = provision
        .args(["--users", &users.to_string(), "--prefix", "load"])
        .args(["--password", PASSWORD, "--argon2-m-kib", "64", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let nodes = dirs
        .into_iter()
        .zip(data)
        .enumerate()
        .map(|(i, (dir, data))| {
            let mut args = vec![
                "--node-id".to_owned(),
                format!("n{i}"),
                "--listen".to_owned(),
                format!("127.0.0.1:{}", ports[i].0),
                "--rate-limit".to_owned(),
                "100000".to_owned(),
                "--metrics".to_owned(),
                "127.0.0.1:0".to_owned(),
            ];
            for p in &peers {
                args.extend(["--peer".to_owned(), p.clone()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Server::start_in(dir, data, &args, None)
        })
        .collect();
    (nodes, peers, out, scratch)
}

fn loadgen(peers: &[String], users: &Path, scenario: &[&str]) -> Report {
    let mut args = vec![
        "courier-loadgen".to_string(),
        "--quiet".into(),
        "--in-process".into(),
        "--settle-secs".into(),
        "3".into(),
        "--users".into(),
        users.display().to_string(),
    ];
    for p in peers {
        args.extend(["--peer".into(), p.clone()]);
    }
    args.extend(scenario.iter().map(|s| s.to_string()));
    run(&Cli::try_parse_from(args).expect("valid loadgen arguments")).expect("loadgen run")
}

/// Forwarding needs the links: waits until every node has both peers up.
fn wait_linked(nodes: &[Server]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, node) in nodes.iter().enumerate() {
        while Server::metric_sum(&node.metrics(), "courier_peer_up") < 2.0 {
            assert!(Instant::now() < deadline, "n{i} did not link");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn assert_clean(r: &Report) {
    assert_eq!((r.lost, r.duplicates, r.out_of_order), (0, 0, 0), "{r:#?}");
    assert!(r.passed, "{r:#?}");
    assert_eq!(r.connect_failures, 0, "{r:#?}");
    assert_eq!(r.send_errors, 0, "{r:#?}");
    assert_eq!(r.setup_errors, 0, "{r:#?}");
}

#[test]
fn loadgen_connects_and_chats_on_a_three_node_encrypted_cluster_and_checks_every_delivery() {
    let (nodes, peers, users, _scratch) = cluster(600);
    let r = loadgen(
        &peers,
        &users,
        &["connect", "--connections", "300", "--hold", "1"],
    );
    assert_clean(&r);
    assert_eq!(r.connected, 300, "{r:#?}");
    assert_eq!(r.servers.len(), 3);

    let r = loadgen(
        &peers,
        &users,
        &[
            "--pairing",
            "local",
            "chat",
            "--pairs",
            "60",
            "--window",
            "8",
            "--duration",
            "2",
        ],
    );
    assert_clean(&r);
    assert_eq!(r.connected, 120, "{r:#?}");
    assert!(r.acked > 0 && r.acked <= r.sent, "{r:#?}");
    // Every node served some of them, each with its own key, and nobody was redirected.
    for (i, node) in nodes.iter().enumerate() {
        let log = node.log();
        assert!(!log.contains("encryption_failed"), "n{i}: {log}");
    }
    assert!(!r.errors.contains_key("REDIRECT"), "{r:#?}");
}

#[test]
fn loadgen_chats_and_groups_across_the_nodes_of_a_cluster_and_checks_every_delivery() {
    let (nodes, peers, users, _scratch) = cluster(300);
    wait_linked(&nodes);
    let r = loadgen(
        &peers,
        &users,
        &["chat", "--pairs", "60", "--window", "8", "--duration", "2"],
    );
    assert_clean(&r);
    assert_eq!(r.connected, 120, "{r:#?}");
    assert!(r.acked > 0 && r.acked <= r.sent, "{r:#?}");
    let r = loadgen(
        &peers,
        &users,
        &[
            "group",
            "--groups",
            "10",
            "--members",
            "12",
            "--duration",
            "2",
        ],
    );
    assert_clean(&r);
    assert!(r.delivered > 0, "{r:#?}");
    // Threads crossed nodes: every node forwarded requests and sent push batches.
    for (i, node) in nodes.iter().enumerate() {
        let metrics = node.metrics();
        let forwards = Server::metric_sum(&metrics, "courier_peer_forwards_total");
        let batches = Server::metric_sum(&metrics, "courier_peer_push_batches_total");
        assert!(
            forwards > 0.0 && batches > 0.0,
            "n{i}: {forwards} forwards, {batches} batches"
        );
    }
}

/// A node SIGKILLed in the middle of a cross-node chat load and restarted: no message that was
/// acknowledged is lost for any recipient (the loadgen checks every (message, recipient) pair;
/// recipients on the killed node reconnect, RESUME and get what they missed by SYNC), none is
/// delivered twice, and the links re-form by themselves.
#[test]
fn a_node_killed_under_cross_node_load_and_restarted_loses_no_acknowledged_message() {
    let (mut nodes, peers, users, _scratch) = cluster(300);
    wait_linked(&nodes);
    let load = {
        let (peers, users) = (peers.clone(), users.clone());
        std::thread::spawn(move || {
            loadgen(
                &peers,
                &users,
                &["chat", "--pairs", "60", "--window", "8", "--duration", "10"],
            )
        })
    };
    // Kill n2 once the load reaches it (its clients sent it thousands of frames).
    let deadline = Instant::now() + Duration::from_secs(30);
    while Server::metric_sum(&nodes[2].metrics(), "courier_frames_in_total") < 2000.0 {
        assert!(Instant::now() < deadline, "no load reached n2");
        std::thread::sleep(Duration::from_millis(20));
    }
    nodes[2].crash_and_restart_in_place();
    wait_linked(&nodes);
    let r = load.join().expect("the loadgen thread");
    assert_eq!((r.lost, r.duplicates, r.out_of_order), (0, 0, 0), "{r:#?}");
    assert!(r.passed, "{r:#?}");
    assert!(
        r.disconnects > 0,
        "the kill cut connections under load: {r:#?}"
    );
    assert!(r.acked > 0, "{r:#?}");
    // The killed node's users missed pushes while it was down and got them by SYNC.
    assert!(r.recovered_by_sync > 0, "{r:#?}");
}
