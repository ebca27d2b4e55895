//! Three `courier serve` nodes on loopback, configured as one cluster with `--peer`: where
//! accounts live, how clients are routed to them, and what is refused until nodes are linked.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use courier::cluster::{partition, Router};
use courier_protocol::{ErrorCode, Frame, Login, Redirect, Register, Resume};
use socket2::{Domain, Socket, Type};
use util::{Server, TestConn, PASSWORD};

const WAIT: Duration = Duration::from_secs(10);

/// Nodes `n0`, `n1`, `n2`. Each node's advertised client address (the one its peers name in
/// `REDIRECT`) is a port reserved before any node starts, so every `--peer` list can name it:
/// the test holds an `SO_REUSEPORT` socket bound (not listening) on it, which keeps other
/// processes off the port and lets the node (which binds with `SO_REUSEPORT`) listen there.
/// The harness's own ephemeral listen address is a second address of the same node.
struct Cluster {
    nodes: Vec<Server>,
    ids: Vec<String>,
    addrs: Vec<SocketAddr>,
    router: Router,
    _reserved: Vec<Socket>,
}

/// A loopback address no one listens on now, for a node's cluster links.
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().unwrap()
}

fn reserve_port() -> (Socket, SocketAddr) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).expect("bind a loopback port");
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr)
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Cluster {
        let ids: Vec<String> = (0..3).map(|i| format!("n{i}")).collect();
        let (reserved, addrs): (Vec<Socket>, Vec<SocketAddr>) =
            (0..3).map(|_| reserve_port()).unzip();
        let links: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
        let nodes = (0..3)
            .map(|i| {
                let args = Cluster::args(&ids, &addrs, &links, i);
                let args: Vec<&str> = args
                    .iter()
                    .map(String::as_str)
                    .chain(extra.iter().copied())
                    .collect();
                Server::start_with(&args)
            })
            .collect();
        let peers: Vec<(String, String)> = ids
            .iter()
            .zip(&addrs)
            .map(|(id, addr)| (id.clone(), addr.to_string()))
            .collect();
        Cluster {
            nodes,
            router: Router::new(&ids[0], &peers),
            ids,
            addrs,
            _reserved: reserved,
        }
    }

    /// `courier serve` arguments of node `i`: its id, its advertised address, and every node
    /// (itself too) as `ID=CLIENT_ADDR@CLUSTER_ADDR`.
    fn args(ids: &[String], addrs: &[SocketAddr], links: &[SocketAddr], i: usize) -> Vec<String> {
        let mut args = vec![
            "--node-id".to_string(),
            ids[i].clone(),
            "--listen".to_string(),
            addrs[i].to_string(),
            // Each node has its own Noise key, and nothing yet tells a client the key of the
            // node a REDIRECT names (NOISE.md section 6): a cluster runs plaintext for now.
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

    /// The index of the node that is home to `handle`.
    fn home_of_handle(&self, handle: &str) -> usize {
        let owner = self.router.owner(partition::of_handle(handle));
        self.ids.iter().position(|id| id == owner).unwrap()
    }

    /// The index of the node that owns the partition of `id` (a user or a thread).
    fn home_of_id(&self, id: u64) -> usize {
        let owner = self.router.owner(partition::of_id(id));
        self.ids.iter().position(|n| n == owner).unwrap()
    }

    /// The first handle `{prefix}{i}` whose home is `node`.
    fn handle_on(&self, node: usize, prefix: &str) -> String {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|h| self.home_of_handle(h) == node)
            .unwrap()
    }

    /// A connection to node `i` that said hello, on the harness's own listen address of the
    /// node (redirects name the other one).
    fn connect(&self, i: usize) -> TestConn {
        let mut c = self.nodes[i].connect();
        c.hello();
        c
    }

    /// The `REDIRECT` to node `home`, as the others send it.
    fn redirect_to(&self, home: usize) -> Frame {
        Frame::Redirect(Redirect {
            node: self.ids[home].clone(),
            addr: self.addrs[home].to_string(),
            // These nodes run plaintext (`--insecure-plaintext`), so REDIRECT names no key.
            key: bytes::Bytes::new(),
        })
    }

    /// Sends `frame` (an authentication) on a fresh connection to node `entry`: if `entry` is
    /// not `home`, asserts that the answer is `REDIRECT` to `home` and a close, and sends it
    /// again there. Returns the final answer and the connection it came on.
    fn authenticate_via(&self, entry: usize, home: usize, frame: Frame) -> (Frame, TestConn) {
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
            // Follow it: connect to the address the REDIRECT named.
            c = TestConn::connect(self.addrs[home]);
            c.hello();
        }
        (c.request(frame), c)
    }
}

fn register(handle: &str, device: &str) -> Frame {
    Frame::Register(Register {
        handle: handle.into(),
        password: PASSWORD.into(),
        device: device.into(),
    })
}

fn login(handle: &str, device: &str) -> Frame {
    Frame::Login(Login {
        handle: handle.into(),
        password: PASSWORD.into(),
        device: device.into(),
    })
}

fn auth_ok(frame: Frame) -> courier_protocol::AuthOk {
    match frame {
        Frame::AuthOk(ok) => ok,
        other => panic!("expected AUTH_OK, got {other:?}"),
    }
}

#[test]
fn register_via_any_node_ends_on_the_home() {
    let cluster = Cluster::start();
    for home in 0..3 {
        for entry in 0..3 {
            let handle = cluster.handle_on(home, &format!("reg{entry}x"));
            let (answer, _conn) = cluster.authenticate_via(entry, home, register(&handle, "d"));
            let ok = auth_ok(answer);
            assert_eq!(partition::of_id(ok.user), partition::of_handle(&handle));
            assert_eq!(
                cluster.home_of_id(ok.user),
                home,
                "{handle}'s id is homed elsewhere"
            );
            assert_eq!(
                partition::of_token(&ok.token),
                Some(partition::of_id(ok.user)),
                "the token names the user's partition"
            );
        }
    }
}

#[test]
fn a_handle_is_unique_across_nodes() {
    let cluster = Cluster::start();
    for home in 0..3 {
        let handle = cluster.handle_on(home, "dup");
        let (first, second) = ((home + 1) % 3, (home + 2) % 3);
        let (answer, _a) = cluster.authenticate_via(first, home, register(&handle, "a"));
        auth_ok(answer);
        // Asked again through either node, the claim goes to the home, which refuses it (no
        // node but the home ever holds the handle, so none can answer for it).
        for entry in [second, first] {
            let (answer, _b) = cluster.authenticate_via(entry, home, register(&handle, "b"));
            assert_eq!(
                util::error_code(&answer),
                ErrorCode::HandleTaken,
                "{handle}"
            );
        }
    }
}

#[test]
fn login_on_a_wrong_node_redirects_then_works_at_home() {
    let cluster = Cluster::start();
    let handle = cluster.handle_on(2, "lin");
    let (answer, _c) = cluster.authenticate_via(2, 2, register(&handle, "phone"));
    let registered = auth_ok(answer);
    for entry in [0, 1] {
        let (answer, _c) = cluster.authenticate_via(entry, 2, login(&handle, "laptop"));
        let ok = auth_ok(answer);
        assert_eq!(ok.user, registered.user);
    }
    // The redirect comes before any password work: a wrong password is redirected too, and
    // only the home says BAD_CREDENTIALS.
    let mut bad = login(&handle, "laptop");
    if let Frame::Login(l) = &mut bad {
        l.password = "wrong password".into();
    }
    let (answer, _c) = cluster.authenticate_via(0, 2, bad);
    assert_eq!(util::error_code(&answer), ErrorCode::BadCredentials);
}

#[test]
fn resume_on_a_wrong_node_redirects_then_works_at_home() {
    let cluster = Cluster::start();
    for home in 0..3 {
        let handle = cluster.handle_on(home, "res");
        let (answer, _c) = cluster.authenticate_via(home, home, register(&handle, "phone"));
        let registered = auth_ok(answer);
        for entry in (0..3).filter(|&e| e != home) {
            let resume = Frame::Resume(Resume {
                token: registered.token.clone(),
            });
            let (answer, mut conn) = cluster.authenticate_via(entry, home, resume);
            let ok = auth_ok(answer);
            assert_eq!((ok.user, ok.device), (registered.user, registered.device));
            conn.ping();
        }
    }
}

#[test]
fn the_client_library_ends_up_authenticated_at_home_from_any_node() {
    use courier_client::{Client, ClientConfig};
    let cluster = Cluster::start();
    let handle = cluster.handle_on(1, "lib");
    let at_home = |client: &Client| {
        assert_eq!(client.welcome().unwrap().node, cluster.ids[1]);
        assert_eq!(client.server_addr(), cluster.addrs[1].to_string());
    };
    let first = Client::connect(cluster.addrs[0], ClientConfig::default()).unwrap();
    let registered = first.register(&handle, PASSWORD).unwrap();
    at_home(&first);
    let second = Client::connect(cluster.addrs[2], ClientConfig::default()).unwrap();
    assert_eq!(
        second.login(&handle, PASSWORD).unwrap().user,
        registered.user
    );
    at_home(&second);
    // The login replaced the registration's token (one token per device name).
    let token = second.token().unwrap();
    let third = Client::connect(cluster.addrs[0], ClientConfig::reconnecting()).unwrap();
    assert_eq!(third.resume(&token).unwrap().user, registered.user);
    at_home(&third);
}

#[test]
fn courier_cli_works_against_any_node() {
    let cluster = Cluster::start();
    let handle = cluster.handle_on(2, "cli");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cli.toml");
    let cli = |entry: usize, args: &[&str]| {
        let out = std::process::Command::new(util::cli_bin())
            .env("COURIER_CONFIG", &config)
            .env("COURIER_SERVER", cluster.addrs[entry].to_string())
            .env_remove("COURIER_PASSWORD")
            .arg("--insecure-plaintext")
            .args(args)
            .output()
            .expect("run courier-cli");
        assert!(
            out.status.success(),
            "courier-cli {args:?} via {}: {}",
            cluster.ids[entry],
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let registered = cli(0, &["--json", "register", &handle, "--password", PASSWORD]);
    assert_eq!(registered["server"], cluster.addrs[2].to_string());
    let logged_in = cli(1, &["--json", "login", &handle, "--password", PASSWORD]);
    assert_eq!(logged_in["user"], registered["user"]);
    assert_eq!(logged_in["server"], cluster.addrs[2].to_string());
}

#[test]
fn admin_provision_puts_each_user_on_its_home_node() {
    let mut cluster = Cluster::start();
    for node in &cluster.nodes {
        node.stop();
    }
    let out = cluster.nodes[0]
        .data_dir
        .with_file_name("cluster-users.txt");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_courier"));
    command.args(["admin", "provision"]);
    for (id, node) in cluster.ids.iter().zip(&cluster.nodes) {
        command
            .arg("--node")
            .arg(format!("{id}={}", node.data_dir.display()));
    }
    let output = command
        .args(["--users", "40", "--prefix", "load", "--password", PASSWORD])
        .args(["--argon2-m-kib", "64", "--out"])
        .arg(&out)
        .output()
        .expect("run courier admin provision");
    assert!(
        output.status.success(),
        "courier admin provision failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("provisioned 40 users"));
    for node in &mut cluster.nodes {
        node.restart();
    }
    // The load generator reads the file as before: every handle once.
    let users = courier_loadgen::users::read_users_file(&out).unwrap();
    let mut handles: Vec<&str> = users.iter().map(|u| u.handle.as_str()).collect();
    handles.sort_unstable();
    let mut expected: Vec<String> = (0..40).map(|i| format!("load{i}")).collect();
    expected.sort_unstable();
    assert_eq!(handles, expected);
    let mut per_node = [0; 3];
    for user in &users {
        let home = cluster.home_of_handle(&user.handle);
        assert_eq!(
            cluster.home_of_id(user.id),
            home,
            "{} has an id of another node",
            user.handle
        );
        per_node[home] += 1;
        // Resumed through another node, the user lands on its home, where the token is valid.
        let resume = Frame::Resume(Resume {
            token: user.token.clone().into(),
        });
        let (answer, _c) = cluster.authenticate_via((home + 1) % 3, home, resume);
        assert_eq!(auth_ok(answer).user, user.id, "{}", user.handle);
    }
    assert!(per_node.iter().all(|&n| n > 0), "{per_node:?}");
}

#[test]
fn a_bad_node_list_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (vec!["n0"], "write a node as ID=DATA_DIR"),
        (vec!["n0=/tmp/a", "n0=/tmp/b"], "--node n0 is given twice"),
    ];
    for (nodes, says) in cases {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_courier"));
        command.args(["admin", "provision", "--users", "1", "--password", PASSWORD]);
        for node in &nodes {
            command.args(["--node", node]);
        }
        let output = command
            .arg("--out")
            .arg(dir.path().join("users.txt"))
            .output()
            .unwrap();
        assert!(!output.status.success());
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(err.contains(says), "{err}");
    }
}

/// The message of an `ERROR_REPLY` with `code`.
fn error_message(frame: &Frame, code: ErrorCode) -> String {
    assert_eq!(util::error_code(frame), code, "{frame:?}");
    match frame {
        Frame::ErrorReply(e) => e.message.clone(),
        _ => unreachable!(),
    }
}

#[test]
fn threads_live_in_their_partitions_and_requests_for_other_nodes_are_refused() {
    use courier_protocol::{AddMembers, CreateGroup, LookupUser, OpenDirect};
    let cluster = Cluster::start();
    // Users of n0, and every pair of them: about a third of the pairs are homed on n0.
    let mut users: Vec<(TestConn, u64)> = (0..8)
        .map(|i| {
            let handle = cluster.handle_on(0, &format!("place{i}x"));
            let (answer, conn) = cluster.authenticate_via(0, 0, register(&handle, "d"));
            (conn, auth_ok(answer).user)
        })
        .collect();
    let ids: Vec<u64> = users.iter().map(|(_, id)| *id).collect();
    let far_handle = cluster.handle_on(1, "far");
    let (answer, _far_conn) = cluster.authenticate_via(1, 1, register(&far_handle, "d"));
    let far = auth_ok(answer).user;
    let pairs: Vec<(usize, usize)> = (0..8)
        .flat_map(|i| (i + 1..8).map(move |j| (i, j)))
        .collect();
    let pair_home = |(i, j): (usize, usize)| {
        cluster.home_of_id(partition::compose(partition::of_pair(ids[i], ids[j]), 1))
    };
    let (i, j) = *pairs
        .iter()
        .find(|&&p| pair_home(p) == 0)
        .expect("a pair homed on n0");
    let (k, l) = *pairs
        .iter()
        .find(|&&p| pair_home(p) != 0)
        .expect("a pair homed elsewhere");

    // A direct thread homed here: created in its pair's partition, and it works.
    let Frame::ThreadInfo(direct) = users[i].0.request(OpenDirect { peer: ids[j] }) else {
        panic!("OPEN_DIRECT of a pair homed here failed");
    };
    let direct = direct.thread.id;
    assert_eq!(partition::of_id(direct), partition::of_pair(ids[i], ids[j]));
    util::send(&mut users[i].0, direct, 1, "hi");

    // A direct thread homed on another node: refused, naming the node.
    let owner = &cluster.ids[pair_home((k, l))];
    let answer = users[k].0.request(OpenDirect { peer: ids[l] });
    assert!(error_message(&answer, ErrorCode::Unavailable).contains(&format!("node {owner} ")));

    let alice = &mut users[0].0;
    // A group is homed with its creator; its members must be homed here too.
    let Frame::ThreadInfo(group) = alice.request(CreateGroup {
        name: "here".into(),
        members: vec![ids[1], ids[2]],
    }) else {
        panic!("CREATE_GROUP of local users failed");
    };
    let group = group.thread.id;
    assert_eq!(partition::of_id(group), partition::of_id(ids[0]));
    util::send(alice, group, 2, "hello group");
    let answer = alice.request(CreateGroup {
        name: "mixed".into(),
        members: vec![ids[1], far],
    });
    assert!(error_message(&answer, ErrorCode::Unavailable).contains("node n1 "));
    let answer = alice.request(AddMembers {
        thread: group,
        members: vec![far],
    });
    assert!(error_message(&answer, ErrorCode::Unavailable).contains("node n1 "));

    // A thread or a handle that lives on another node.
    let elsewhere = (0..partition::PARTITIONS)
        .find(|&p| cluster.router.owner(p) == "n2")
        .unwrap();
    let answer = util::try_send(alice, partition::compose(elsewhere, 1), 3, "lost?");
    assert!(error_message(&answer, ErrorCode::Unavailable).contains("node n2 "));
    let answer = alice.request(LookupUser { handle: far_handle });
    assert!(error_message(&answer, ErrorCode::Unavailable).contains("node n1 "));
    // Refusals leave the connection open.
    alice.ping();
}
