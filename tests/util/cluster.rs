//! Three `courier serve` nodes on loopback configured as one cluster with `--peer`, for the
//! cluster tests: start, wait until linked, find handles and ids homed on a given node,
//! authenticate through any node following `REDIRECT`.
//!
//! The nodes are encrypted, as a real cluster is: each node's key pair is written into its
//! data directory before it starts, every `--peer` entry lists it (`ID=CLIENT@CLUSTER#KEY`),
//! so links run Noise IK, a `REDIRECT` names the home's key, and every client connection pins
//! the key of the node it reaches. [`Cluster::start_plaintext`] runs the nodes with
//! `--insecure-plaintext` instead, for a test that needs plaintext.

use std::net::SocketAddr;
use std::time::Duration;

use courier::cluster::{partition, Router};
use courier_protocol::noise::{Keypair, PublicKey};
use courier_protocol::session::Encryption;
use courier_protocol::{Frame, Login, Redirect, Register};
use socket2::{Domain, Socket, Type};

use super::{Server, TestConn, PASSWORD};

pub const WAIT: Duration = Duration::from_secs(10);

/// Nodes `n0`, `n1`, `n2`. Each node's advertised client address (the one its peers name in
/// `REDIRECT`) is a port reserved before any node starts, so every `--peer` list can name it:
/// the test holds an `SO_REUSEPORT` socket bound (not listening) on it, which keeps other
/// processes off the port and lets the node (which binds with `SO_REUSEPORT`) listen there.
/// The harness's own ephemeral listen address is a second address of the same node. Each
/// node's key is its `Server::key` (`None` on a plaintext cluster).
pub struct Cluster {
    pub nodes: Vec<Server>,
    pub ids: Vec<String>,
    pub addrs: Vec<SocketAddr>,
    pub router: Router,
    _reserved: Vec<Socket>,
}

/// A loopback address no one listens on now, for a node's cluster links. The port is free
/// when this returns, and the node binds it a moment later (its cluster listener cannot share
/// a reserved port: no `SO_REUSEPORT`). On 127.0.0.1 another test's connection could take the
/// port as its source port in between (seen once: "Address already in use"); so each address
/// is on a loopback IP of its own (127.P.Q.R from the process id and a counter), where nothing
/// but this node ever binds or connects from.
pub fn free_addr() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pid = std::process::id();
    let ip = std::net::Ipv4Addr::new(
        127,
        (pid % 200) as u8 + 20,
        ((n >> 8) % 256) as u8,
        (n % 254) as u8 + 1,
    );
    let listener = std::net::TcpListener::bind((ip, 0)).expect("bind a loopback port");
    listener.local_addr().unwrap()
}

pub fn reserve_port() -> (Socket, SocketAddr) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).expect("bind a loopback port");
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr)
}

impl Cluster {
    /// Three encrypted nodes, linked.
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// [`start`](Self::start) with `extra` arguments for every node.
    pub fn start_with(extra: &[&str]) -> Cluster {
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        Cluster::launch(true, |_| extra.clone())
    }

    /// Three nodes with plaintext links and client connections (`--insecure-plaintext`):
    /// `REDIRECT` names no key and clients do not encrypt.
    pub fn start_plaintext(extra: &[&str]) -> Cluster {
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        Cluster::launch(false, |_| extra.clone())
    }

    /// Three nodes, encrypted or not, node `i` with the arguments `extra(i)` besides the
    /// cluster's own; returns once every node is linked to every other.
    pub fn launch(encrypted: bool, extra: impl Fn(usize) -> Vec<String>) -> Cluster {
        let ids: Vec<String> = (0..3).map(|i| format!("n{i}")).collect();
        let (reserved, addrs): (Vec<Socket>, Vec<SocketAddr>) =
            (0..3).map(|_| reserve_port()).unzip();
        let links: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
        let keys: Vec<Keypair> = (0..3)
            .map(|_| Keypair::generate().expect("a node key pair"))
            .collect();
        let listed: Vec<PublicKey> = keys.iter().map(Keypair::public).collect();
        let nodes = (0..3)
            .map(|i| {
                let mut args = if encrypted {
                    Cluster::keyed_args(&ids, &addrs, &links, &listed, i)
                } else {
                    Cluster::args(&ids, &addrs, &links, i)
                };
                args.extend(extra(i));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                if encrypted {
                    let node = Server::start_keyed(&keys[i], &args);
                    assert_eq!(node.key, Some(listed[i]), "n{i} runs with its listed key");
                    node
                } else {
                    Server::start_with(&args)
                }
            })
            .collect();
        let peers: Vec<(String, String)> = ids
            .iter()
            .zip(&addrs)
            .map(|(id, addr)| (id.clone(), addr.to_string()))
            .collect();
        let cluster = Cluster {
            nodes,
            router: Router::new(&ids[0], &peers),
            ids,
            addrs,
            _reserved: reserved,
        };
        cluster.wait_linked();
        cluster
    }

    /// Waits until every node logged that its links to every other node are up, so that the
    /// first forwarded request does not meet a link still in its handshake.
    pub fn wait_linked(&self) {
        let deadline = std::time::Instant::now() + WAIT;
        for (i, node) in self.nodes.iter().enumerate() {
            for (j, other) in self.ids.iter().enumerate() {
                let line = format!("cluster node {other} is linked");
                while i != j && !node.log().contains(&line) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{} did not link to {other}:\n{}",
                        self.ids[i],
                        node.log()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// `courier serve` arguments of node `i` of a plaintext cluster: its id, its advertised
    /// address, `--insecure-plaintext`, and every node (itself too) as
    /// `ID=CLIENT_ADDR@CLUSTER_ADDR`.
    pub fn args(
        ids: &[String],
        addrs: &[SocketAddr],
        links: &[SocketAddr],
        i: usize,
    ) -> Vec<String> {
        let mut args = vec![
            "--node-id".to_string(),
            ids[i].clone(),
            "--listen".to_string(),
            addrs[i].to_string(),
            "--insecure-plaintext".to_string(),
        ];
        for j in 0..ids.len() {
            args.extend([
                "--peer".to_string(),
                format!("{}={}@{}", ids[j], addrs[j], links[j]),
            ]);
        }
        args
    }

    /// `courier serve` arguments of node `i` of an encrypted cluster: its id, its advertised
    /// address, and every node (itself too) as `ID=CLIENT_ADDR@CLUSTER_ADDR#KEY`, `keys[j]`
    /// being node `j`'s public key (which its data directory must hold).
    pub fn keyed_args(
        ids: &[String],
        addrs: &[SocketAddr],
        links: &[SocketAddr],
        keys: &[PublicKey],
        i: usize,
    ) -> Vec<String> {
        let mut args = vec![
            "--node-id".to_string(),
            ids[i].clone(),
            "--listen".to_string(),
            addrs[i].to_string(),
        ];
        for j in 0..ids.len() {
            args.extend([
                "--peer".to_string(),
                format!("{}={}@{}#{}", ids[j], addrs[j], links[j], keys[j]),
            ]);
        }
        args
    }

    /// Node `i`'s public key; `None` on a plaintext cluster.
    pub fn key_of(&self, i: usize) -> Option<PublicKey> {
        self.nodes[i].key
    }

    /// How a client reaches node `i`: its key pinned, or plaintext.
    pub fn encryption(&self, i: usize) -> Encryption {
        self.nodes[i].encryption()
    }

    /// `courier-cli` arguments to reach node `i`: `--server-key HEX`, or
    /// `--insecure-plaintext`.
    pub fn client_args(&self, i: usize) -> Vec<String> {
        self.nodes[i].client_args()
    }

    /// The index of the node that is home to `handle`.
    pub fn home_of_handle(&self, handle: &str) -> usize {
        let owner = self.router.owner(partition::of_handle(handle));
        self.ids.iter().position(|id| id == owner).unwrap()
    }

    /// The index of the node that owns the partition of `id` (a user or a thread).
    pub fn home_of_id(&self, id: u64) -> usize {
        let owner = self.router.owner(partition::of_id(id));
        self.ids.iter().position(|n| n == owner).unwrap()
    }

    /// The first handle `{prefix}{i}` whose home is `node`.
    pub fn handle_on(&self, node: usize, prefix: &str) -> String {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|h| self.home_of_handle(h) == node)
            .unwrap()
    }

    /// A new user homed on `node` (the first handle `{prefix}{i}` homed there), connected to
    /// it: the connection and the user id.
    pub fn user_on(&self, node: usize, prefix: &str) -> (TestConn, u64) {
        let handle = self.handle_on(node, prefix);
        let (answer, conn) = self.authenticate_via(node, node, register(&handle, "d"));
        (conn, auth_ok(answer).user)
    }

    /// A connection to node `i` that said hello (pinning its key), on the harness's own
    /// listen address of the node (redirects name the other one).
    pub fn connect(&self, i: usize) -> TestConn {
        let mut c = self.nodes[i].connect();
        c.hello();
        c
    }

    /// Stops every node (SIGTERM), so their data directories can be written offline.
    pub fn stop_all(&self) {
        for node in &self.nodes {
            node.stop();
        }
    }

    /// Starts every node again on its data directory (each on a fresh harness address; the
    /// advertised and cluster addresses stay). Links form again by themselves.
    pub fn restart_all(&mut self) {
        for node in &mut self.nodes {
            node.restart();
        }
    }

    /// A thread id in a partition that node `node` owns, with a sequence number far above
    /// what the node allocates itself (for threads planted offline).
    pub fn thread_on(&self, node: usize, seq: u64) -> u64 {
        let p = (0..partition::PARTITIONS)
            .find(|&p| self.router.owner(p) == self.ids[node])
            .unwrap();
        partition::compose(p, 1_000_000 + seq)
    }

    /// The `REDIRECT` to node `home`, as the others send it.
    pub fn redirect_to(&self, home: usize) -> Frame {
        Frame::Redirect(Redirect {
            node: self.ids[home].clone(),
            addr: self.addrs[home].to_string(),
            // The home's key, which the client pins for the new connection; none in plaintext.
            key: self.key_of(home).map_or(bytes::Bytes::new(), |k| {
                bytes::Bytes::copy_from_slice(k.as_bytes())
            }),
        })
    }

    /// Sends `frame` (an authentication) on a fresh connection to node `entry`: if `entry` is
    /// not `home`, asserts that the answer is `REDIRECT` to `home` and a close, and sends it
    /// again there. Returns the final answer and the connection it came on.
    pub fn authenticate_via(&self, entry: usize, home: usize, frame: Frame) -> (Frame, TestConn) {
        let mut c = self.connect(entry);
        if entry != home {
            c.send_request(frame.clone());
            let frames = c.expect_closed(WAIT);
            assert_eq!(
                frames,
                vec![self.redirect_to(home)],
                "{} on {} for a user of {}",
                frame.name(),
                self.ids[entry],
                self.ids[home]
            );
            // Follow it: connect to the address the REDIRECT named, pinning the key it named.
            c = TestConn::connect_with(self.addrs[home], self.encryption(home));
            c.hello();
        }
        (c.request(frame), c)
    }
}

pub fn register(handle: &str, device: &str) -> Frame {
    Frame::Register(Register {
        handle: handle.into(),
        password: PASSWORD.into(),
        device: device.into(),
    })
}

pub fn login(handle: &str, device: &str) -> Frame {
    Frame::Login(Login {
        handle: handle.into(),
        password: PASSWORD.into(),
        device: device.into(),
    })
}

pub fn auth_ok(frame: Frame) -> courier_protocol::AuthOk {
    match frame {
        Frame::AuthOk(ok) => ok,
        other => panic!("expected AUTH_OK, got {other:?}"),
    }
}

impl Cluster {
    /// Like [`Cluster::start_with`], with arguments of each node's own: `extra(i)` for node
    /// `i` (e.g. a push gateway per node, to tell which node sent a notification).
    pub fn start_each(extra: impl Fn(usize) -> Vec<String>) -> Cluster {
        Cluster::launch(true, extra)
    }
}
