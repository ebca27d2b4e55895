//! Encrypted clusters of real `courier serve` nodes on loopback: every node's key is in the
//! `--peer` list, links run Noise IK under the node frames (NOISE.md section 6), and a node
//! whose key is not the listed one is refused with a clear log line on both sides. A client
//! pinned to the key of the node it reaches follows a `REDIRECT` to another node by pinning the
//! key the `REDIRECT` names.

mod util;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use courier::cluster::{partition, Router};
use courier_client::{Client, ClientConfig};
use courier_protocol::noise::Keypair;
use util::{write_key, Server};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of the sample `name{labels}` in Prometheus text, if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn node_key(i: usize) -> Keypair {
    Keypair::from_private([0x31 + i as u8; 32])
}

/// (client port, cluster port) of n0, n1, n2, and the keys their `--peer` entries list.
struct Plan {
    ports: Vec<(u16, u16)>,
    listed: Vec<Keypair>,
}

impl Plan {
    fn new() -> Plan {
        Plan {
            ports: (0..3).map(|_| (free_port(), free_port())).collect(),
            listed: (0..3).map(node_key).collect(),
        }
    }

    fn args(&self, i: usize) -> Vec<String> {
        let mut args = vec![
            "--node-id".to_owned(),
            format!("n{i}"),
            "--listen".to_owned(),
            format!("127.0.0.1:{}", self.ports[i].0),
            "--metrics".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        for (j, (client, cluster)) in self.ports.iter().enumerate() {
            args.push("--peer".to_owned());
            args.push(format!(
                "n{j}=127.0.0.1:{client}@127.0.0.1:{cluster}#{}",
                self.listed[j].public()
            ));
        }
        args
    }

    /// Node `i`, holding `key` in its data directory.
    fn start(&self, i: usize, key: &Keypair) -> Server {
        let args = self.args(i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_keyed(key, &args)
    }
}

fn peer_up(server: &Server, peer: &str) -> bool {
    sample(
        &server.metrics(),
        &format!("courier_peer_up{{peer=\"{peer}\"}}"),
    ) == Some(1.0)
}

#[test]
fn three_nodes_with_listed_keys_link_encrypted() {
    let plan = Plan::new();
    let nodes: Vec<Server> = (0..3).map(|i| plan.start(i, &node_key(i))).collect();
    wait_for("every node linked", Duration::from_secs(15), || {
        (0..3).all(|i| {
            (0..3)
                .filter(|&j| j != i)
                .all(|j| peer_up(&nodes[i], &format!("n{j}")))
        })
    });
    assert!(
        nodes[0]
            .log()
            .contains("encrypted (Noise IK, keys from --peer)"),
        "{}",
        nodes[0].log()
    );
}

#[test]
fn a_node_whose_entry_has_another_key_stops_at_start_and_says_which() {
    let plan = Plan::new();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // n0's data directory holds a key that is not the one its --peer entry lists.
    let actual = Keypair::from_private([0x77; 32]);
    write_key(&data_dir, &actual);
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("serve")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(plan.args(0))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "this node's --peer entry (`n0`) has the key {}",
            plan.listed[0].public()
        )) && stderr.contains(&format!("put {} in `n0`'s entry", actual.public())),
        "{stderr}"
    );
}

#[test]
fn an_encrypted_cluster_without_keys_in_the_list_is_refused_at_start() {
    let (client, cluster) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--node-id", "n0", "--peer"])
        .arg(format!("n0=127.0.0.1:{client}@127.0.0.1:{cluster}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ID=CLIENT_ADDR@CLUSTER_ADDR#KEY") && stderr.contains("courier keys"),
        "{stderr}"
    );
}

/// n1 was re-keyed (its data directory holds a new key, its own list says so) but n0 and n2
/// still list its old key: both directions between n1 and the others are refused, each side
/// says why in its log, and `courier_peer_refusals_total{reason="key"}` counts it.
#[test]
fn a_node_with_another_key_than_the_listed_one_is_refused_on_both_sides() {
    let plan = Plan::new();
    let n0 = plan.start(0, &node_key(0));
    let rekeyed = Keypair::from_private([0x99; 32]);
    let n1 = {
        let mut own = Plan {
            ports: plan.ports.clone(),
            listed: plan.listed.clone(),
        };
        own.listed[1] = rekeyed.clone();
        own.start(1, &rekeyed)
    };
    let out = "courier_peer_refusals_total{peer=\"n1\",direction=\"out\",reason=\"key\"}";
    let inbound = "courier_peer_refusals_total{peer=\"n1\",direction=\"in\",reason=\"key\"}";
    let n1_out = "courier_peer_refusals_total{peer=\"n0\",direction=\"out\",reason=\"key\"}";
    let n1_unknown =
        "courier_peer_refusals_total{peer=\"unknown\",direction=\"in\",reason=\"key\"}";
    wait_for("both directions refused", Duration::from_secs(15), || {
        let (m0, m1) = (n0.metrics(), n1.metrics());
        [(&m0, out), (&m0, inbound), (&m1, n1_out), (&m1, n1_unknown)]
            .iter()
            .all(|(m, series)| sample(m, series).unwrap_or(0.0) >= 1.0)
    });
    assert!(!peer_up(&n0, "n1") && !peer_up(&n1, "n0"));
    let (log0, log1) = (n0.log(), n1.log());
    let old = plan.listed[1].public();
    let new = rekeyed.public();
    // n0 dialed n1 with the old key pinned: n1 cannot read the handshake.
    assert!(
        log0.contains(&format!(
            "cluster node n1 refused our link: node n1 does not hold the key its --peer entry gives ({old})"
        )),
        "n0's log:\n{log0}"
    );
    assert!(
        log1.contains("a node dialed with a key pinned for `n1` that is not its key"),
        "n1's log:\n{log1}"
    );
    // n1 dialed n0: the handshake works, and n0 refuses the key n1 proved.
    assert!(
        log0.contains(&format!(
            "refused a link from n1: node `n1` proved the key {new}, but the --peer list here gives {old}"
        )),
        "n0's log:\n{log0}"
    );
    assert!(
        log1.contains(&format!(
            "cluster node n0 refused our link: node `n1` proved the key {new}"
        )),
        "n1's log:\n{log1}"
    );
}

/// The index of the node that is home to `handle` among n0, n1, n2.
fn home_of(handle: &str) -> usize {
    let peers: Vec<(String, String)> = (0..3).map(|i| (format!("n{i}"), String::new())).collect();
    let owner = Router::new("n0", &peers)
        .owner(partition::of_handle(handle))
        .to_owned();
    (0..3).find(|&i| owner == format!("n{i}")).unwrap()
}

#[test]
fn a_client_pinned_to_one_node_follows_a_redirect_to_another_and_logs_in_there_encrypted() {
    let plan = Plan::new();
    let nodes: Vec<Server> = (0..3).map(|i| plan.start(i, &node_key(i))).collect();
    let entry = 0;
    let home = 1;
    let handle = (0..)
        .map(|i| format!("carol{i}"))
        .find(|h| home_of(h) == home)
        .unwrap();
    let home_addr = format!("127.0.0.1:{}", plan.ports[home].0);
    let pinned = ClientConfig::default().with_server_key(node_key(entry).public());

    // REGISTER on n0: redirected to n1 with n1's key, registered there over IK.
    let client = Client::connect(nodes[entry].addr, pinned.clone()).unwrap();
    let auth = client.register(&handle, "password-carol-1").unwrap();
    assert_eq!(client.server_addr(), home_addr);
    assert_eq!(client.server_key().unwrap(), Some(node_key(home).public()));
    assert_eq!(partition::of_id(auth.user), partition::of_handle(&handle));
    assert!(
        client.contacts().is_ok(),
        "the session on n1 serves requests"
    );
    drop(client);

    // LOGIN on n0 later: the same.
    let client = Client::connect(nodes[entry].addr, pinned).unwrap();
    let again = client.login(&handle, "password-carol-1").unwrap();
    assert_eq!(again.user, auth.user);
    assert_eq!(client.server_key().unwrap(), Some(node_key(home).public()));
    let log = nodes[home].log();
    assert!(!log.contains("encryption_failed"), "{log}");
}

/// `courier keys init` creates the data directory and key pair before the first start (to
/// write the --peer list), prints the public key, and prints the same key when run again;
/// `courier keys show` and the server then use that key.
#[test]
fn keys_init_creates_the_key_before_the_first_start_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("fresh").join("data");
    let keys = |command: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(["keys", command, "--data-dir"])
            .arg(&data_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let first = keys("init");
    assert_eq!(first.len(), 64, "{first}");
    assert_eq!(keys("init"), first);
    assert_eq!(keys("show"), first);
    let server = Server::start_in(dir, data_dir, &[], None);
    assert_eq!(server.key.map(|k| k.to_string()), Some(first));
}
