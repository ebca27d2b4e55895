//! Three real `courier serve` nodes linked over loopback: links come up, a SIGKILLed node is
//! seen down within 2 s and relinks after its restart, and a node started with another member
//! list is refused with a clear log line on both sides.

mod util;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use courier_protocol::noise::Keypair;
use util::Server;

/// A free loopback port (bound, then released for the node to take).
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

fn peer_up(server: &Server, peer: &str) -> bool {
    sample(
        &server.metrics(),
        &format!("courier_peer_up{{peer=\"{peer}\"}}"),
    ) == Some(1.0)
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

struct Cluster {
    /// (client port, cluster port) of n0, n1, n2.
    ports: Vec<(u16, u16)>,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            ports: (0..3).map(|_| (free_port(), free_port())).collect(),
        }
    }

    /// `--peer` arguments naming every node with its key; `client_of_n0` replaces n0's client
    /// address.
    fn peers(&self, client_of_n0: Option<&str>) -> Vec<String> {
        let mut args = Vec::new();
        for (i, (client, cluster)) in self.ports.iter().enumerate() {
            let client = match (i, client_of_n0) {
                (0, Some(other)) => other.to_owned(),
                _ => format!("127.0.0.1:{client}"),
            };
            args.push("--peer".to_owned());
            args.push(format!(
                "n{i}={client}@127.0.0.1:{cluster}#{}",
                node_key(i).public()
            ));
        }
        args
    }

    fn start(&self, i: usize, client_of_n0: Option<&str>) -> Server {
        let mut args = vec![
            "--node-id".to_owned(),
            format!("n{i}"),
            "--listen".to_owned(),
            format!("127.0.0.1:{}", self.ports[i].0),
            "--metrics".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        args.extend(self.peers(client_of_n0));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_keyed(&node_key(i), &args)
    }
}

/// Node `i`'s key pair: the links between these nodes are encrypted.
fn node_key(i: usize) -> Keypair {
    Keypair::from_private([0x11 + i as u8; 32])
}

#[test]
fn three_nodes_link_a_killed_node_is_down_within_two_seconds_and_relinks_after_restart() {
    let cluster = Cluster::new();
    let mut nodes: Vec<Server> = (0..3).map(|i| cluster.start(i, None)).collect();
    let others = |i: usize| (0..3).filter(move |&j| j != i).map(|j| format!("n{j}"));
    wait_for(
        "every node linked to both others",
        Duration::from_secs(15),
        || (0..3).all(|i| others(i).all(|p| peer_up(&nodes[i], &p))),
    );

    nodes[2].kill(); // SIGKILL: no goodbye on any link
    let took = wait_for("n2 down at n0 and n1", Duration::from_secs(2), || {
        !peer_up(&nodes[0], "n2") && !peer_up(&nodes[1], "n2")
    });
    assert!(took < Duration::from_secs(2), "seen down after {took:?}");
    assert!(peer_up(&nodes[0], "n1") && peer_up(&nodes[1], "n0"));

    nodes[2].restart();
    wait_for(
        "n2 relinked after its restart",
        Duration::from_secs(15),
        || (0..3).all(|i| others(i).all(|p| peer_up(&nodes[i], &p))),
    );
    let metrics = nodes[0].metrics();
    assert!(
        sample(&metrics, "courier_peer_reconnects_total{peer=\"n2\"}").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
}

#[test]
fn a_node_started_with_another_member_list_is_refused_with_a_clear_log_line() {
    let cluster = Cluster::new();
    let n0 = cluster.start(0, None);
    let n1 = cluster.start(1, None);
    // n2 believes n0's clients connect elsewhere: its member list hash differs.
    let n2 = cluster.start(2, Some("127.0.0.9:7878"));
    wait_for("n0 and n1 linked", Duration::from_secs(15), || {
        peer_up(&n0, "n1") && peer_up(&n1, "n0")
    });
    let refused = "courier_peer_refusals_total{peer=\"n2\",direction=\"in\",reason=\"membership\"}";
    wait_for("n0 refuses n2", Duration::from_secs(10), || {
        sample(&n0.metrics(), refused).unwrap_or(0.0) >= 1.0
    });
    let refused_out =
        "courier_peer_refusals_total{peer=\"n0\",direction=\"out\",reason=\"membership\"}";
    wait_for("n2 counts n0's refusal", Duration::from_secs(10), || {
        sample(&n2.metrics(), refused_out).unwrap_or(0.0) >= 1.0
    });
    assert!(!peer_up(&n0, "n2") && !peer_up(&n2, "n0"));
    let (log0, log2) = (n0.log(), n2.log());
    assert!(
        log0.contains("refused a link from n2: member lists differ")
            && log0.contains("start every node with the same --peer list"),
        "n0's log:\n{log0}"
    );
    assert!(
        log2.contains("cluster node n0 refused our link: member lists differ"),
        "n2's log:\n{log2}"
    );
}

/// SIGSTOP leaves the links open but silent (no FIN, no RST): only the heartbeat can tell.
#[test]
fn a_frozen_node_is_down_within_two_seconds_by_heartbeat_and_up_again_when_thawed() {
    let cluster = Cluster::new();
    let nodes: Vec<Server> = (0..3).map(|i| cluster.start(i, None)).collect();
    wait_for("n0 and n1 linked to n2", Duration::from_secs(15), || {
        peer_up(&nodes[0], "n2") && peer_up(&nodes[1], "n2")
    });
    nodes[2].signal(libc::SIGSTOP);
    let took = wait_for(
        "frozen n2 down at n0 and n1",
        Duration::from_secs(2),
        || !peer_up(&nodes[0], "n2") && !peer_up(&nodes[1], "n2"),
    );
    assert!(
        took >= Duration::from_millis(1000),
        "down after only {took:?}"
    );
    nodes[2].signal(libc::SIGCONT);
    wait_for("n2 relinked once thawed", Duration::from_secs(15), || {
        peer_up(&nodes[0], "n2") && peer_up(&nodes[1], "n2") && peer_up(&nodes[2], "n0")
    });
}
