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

    /// Stops every node (SIGTERM), so their data directories can be written offline.
    fn stop_all(&self) {
        for node in &self.nodes {
            node.stop();
        }
    }

    /// Starts every node again on its data directory (each on a fresh harness address; the
    /// advertised and cluster addresses stay). Links form again by themselves.
    fn restart_all(&mut self) {
        for node in &mut self.nodes {
            node.restart();
        }
    }

    /// A thread id in a partition that node `node` owns, with a sequence number far above
    /// what the node allocates itself (for threads planted offline).
    fn thread_on(&self, node: usize, seq: u64) -> u64 {
        let p = (0..partition::PARTITIONS)
            .find(|&p| self.router.owner(p) == self.ids[node])
            .unwrap();
        partition::compose(p, 1_000_000 + seq)
    }

    /// The `REDIRECT` to node `home`, as the others send it.
    fn redirect_to(&self, home: usize) -> Frame {
        Frame::Redirect(Redirect {
            node: self.ids[home].clone(),
            addr: self.addrs[home].to_string(),
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
/// Writes a group into a stopped node's data directory the way the thread's owner would:
/// its record, members, each member's membership row, and `messages` (sender, body) with
/// clock ids (wall-clock µs, so below anything the node ticks after its restart). This is
/// what a group with members on several nodes looks like on its owner until requests are
/// forwarded between nodes. Returns the message ids.
fn plant_group(
    data_dir: &std::path::Path,
    thread: u64,
    name: &str,
    members: &[u64],
    messages: &[(u64, &str)],
) -> Vec<u64> {
    use courier::store::{FsyncMode, MemberRecord, MessageRecord, PrivateState, ThreadRecord};
    use courier_protocol::{MessageKind, ThreadKind};
    let store = courier::store::Store::open(data_dir, FsyncMode::Always).expect("open the store");
    let mut batch = store.batch();
    let mut ids = Vec::new();
    let mut id = courier::clock::wall_us();
    for &(sender, body) in messages {
        id += 1;
        let msg = MessageRecord {
            sender,
            client_msg_id: id,
            kind: MessageKind::Text,
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            ..Default::default()
        };
        batch.put_message(thread, id, &msg);
        ids.push(id);
    }
    let rec = ThreadRecord {
        kind: ThreadKind::Group,
        name: name.into(),
        created_by: members[0],
        last_msg_id: id,
        changed_at: id,
        member_count: members.len() as u32,
    };
    batch.put_thread(thread, &rec);
    // The owner ticked its clock for these ids: it resumes above them.
    batch.clock_floor(0, id);
    for &user in members {
        let member = MemberRecord {
            admin: user == members[0],
            ..Default::default()
        };
        batch.put_member(thread, user, &member);
        let private = PrivateState {
            changed_at: id,
            ..Default::default()
        };
        batch.put_private_state(user, thread, &private);
    }
    store.commit(batch).expect("write the group");
    ids
}

/// Asks `frame` on `conn` until the answer is not `UNAVAILABLE` (a restarted cluster relinks
/// within a few hundred milliseconds), at most [`WAIT`].
fn request_when_linked(conn: &mut TestConn, frame: impl Into<Frame>) -> Frame {
    let frame = frame.into();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let answer = conn.request(frame.clone());
        match &answer {
            Frame::ErrorReply(e)
                if e.code == ErrorCode::Unavailable as u16
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => return answer,
        }
    }
}

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

#[test]
fn list_threads_shows_a_users_threads_from_every_node() {
    use courier_protocol::{CreateGroup, ListThreads, ThreadList};
    let mut cluster = Cluster::start();
    let user_on = |node: usize, prefix: &str| {
        let handle = cluster.handle_on(node, prefix);
        let (answer, _) = cluster.authenticate_via(node, node, register(&handle, "d"));
        (handle, auth_ok(answer).user)
    };
    let (alice_handle, alice) = user_on(0, "alice");
    let (_, bob) = user_on(1, "bob");
    let (_, carol) = user_on(2, "carol");

    // Alice is in a group owned by n1 (with bob) and one owned by n2 (with carol).
    cluster.stop_all();
    let on_n1 = cluster.thread_on(1, 1);
    let on_n2 = cluster.thread_on(2, 1);
    plant_group(
        &cluster.nodes[1].data_dir,
        on_n1,
        "on n1",
        &[bob, alice],
        &[(bob, "one"), (bob, "two")],
    );
    plant_group(
        &cluster.nodes[2].data_dir,
        on_n2,
        "on n2",
        &[carol, alice],
        &[(carol, "three")],
    );
    cluster.restart_all();

    // And in one of her own node, with the newest message.
    let (answer, mut a) = cluster.authenticate_via(0, 0, login(&alice_handle, "d"));
    assert_eq!(auth_ok(answer).user, alice);
    let Frame::ThreadInfo(group) = a.request(CreateGroup {
        name: "on n0".into(),
        members: vec![],
    }) else {
        panic!("CREATE_GROUP failed");
    };
    let on_n0 = group.thread.id;
    util::send(&mut a, on_n0, 1, "four");

    let first = ListThreads {
        before_msg_id: 0,
        before_thread: 0,
        limit: 0,
    };
    let Frame::ThreadList(list) = request_when_linked(&mut a, first.clone()) else {
        panic!("LIST_THREADS failed");
    };
    let rows: Vec<(u64, &str, u32, String)> = list
        .threads
        .iter()
        .map(|t| {
            let body = t
                .last_message
                .as_ref()
                .map(|m| m.body.clone())
                .unwrap_or_default();
            (
                t.id,
                t.name.as_str(),
                t.unread,
                String::from_utf8_lossy(&body).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (on_n0, "on n0", 0, "four".to_string()),
            (on_n2, "on n2", 1, "three".to_string()),
            (on_n1, "on n1", 2, "two".to_string()),
        ],
        "every node's thread, newest first, with unread counts and previews from its owner"
    );
    assert!(!list.more);

    // Pages of one row walk the merged order.
    let mut cursor = (0, 0);
    let mut walked = Vec::new();
    loop {
        let Frame::ThreadList(ThreadList { threads, more }) = a.request(ListThreads {
            before_msg_id: cursor.0,
            before_thread: cursor.1,
            limit: 1,
        }) else {
            panic!("LIST_THREADS page failed");
        };
        assert_eq!(threads.len(), 1);
        cursor = (threads[0].last_msg_id, threads[0].id);
        walked.push(threads[0].id);
        if !more {
            break;
        }
    }
    assert_eq!(walked, [on_n0, on_n2, on_n1]);
}

/// One SYNC page that must be answered with `SYNC_BATCH`.
fn sync_page(conn: &mut TestConn, f: courier_protocol::Sync) -> courier_protocol::SyncBatch {
    match request_when_linked(conn, f) {
        Frame::SyncBatch(b) => b,
        other => panic!("SYNC: {other:?}"),
    }
}

/// The SYNC that continues the walk `batch` belongs to, as a client of a cluster sends it.
fn continuation(
    batch: &courier_protocol::SyncBatch,
    since: u64,
    since_vector: &[u64],
) -> courier_protocol::Sync {
    let vector = batch
        .vector
        .as_ref()
        .expect("a cluster's SYNC_BATCH has a vector");
    courier_protocol::Sync {
        since,
        after_thread: batch.next_thread,
        after_message: batch.next_message,
        limit: 0,
        watermark: batch.watermark,
        vector: courier_protocol::Tail::some(courier_protocol::SyncVector {
            since: since_vector.to_vec(),
            watermarks: vector.watermarks.clone(),
            after_node: vector.next_node,
        }),
    }
}

/// A whole SYNC walk from (`since`, `since_vector`): every page's messages, and the last page.
fn sync_walk(
    conn: &mut TestConn,
    since: u64,
    since_vector: &[u64],
) -> (Vec<courier_protocol::Message>, courier_protocol::SyncBatch) {
    let mut page = sync_page(
        conn,
        courier_protocol::Sync {
            since,
            after_thread: 0,
            after_message: 0,
            limit: 0,
            watermark: 0,
            vector: courier_protocol::Tail::some(courier_protocol::SyncVector {
                since: since_vector.to_vec(),
                watermarks: vec![],
                after_node: 0,
            }),
        },
    );
    let mut messages = Vec::new();
    loop {
        messages.append(&mut page.messages);
        if !page.more {
            return (messages, page);
        }
        page = sync_page(conn, continuation(&page, since, since_vector));
    }
}

fn bodies(messages: &[courier_protocol::Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

/// Moves a stopped node's clock `ahead` into the future: it resumes above its recorded floor.
fn skew_clock(data_dir: &std::path::Path, ahead: Duration) {
    use courier::store::{FsyncMode, Store};
    let store = Store::open(data_dir, FsyncMode::Always).expect("open the store");
    let mut batch = store.batch();
    batch.clock_floor(0, courier::clock::wall_us() + ahead.as_micros() as u64);
    store.commit(batch).expect("write the clock floor");
}

#[test]
fn sync_across_nodes_skips_nothing_committed_on_another_node_while_paging() {
    use courier_protocol::{CreateGroup, Sync, Tail};
    let mut cluster = Cluster::start();
    let user_on = |node: usize, prefix: &str| {
        let handle = cluster.handle_on(node, prefix);
        let (answer, _) = cluster.authenticate_via(node, node, register(&handle, "d"));
        (handle, auth_ok(answer).user)
    };
    let (alice_handle, alice) = user_on(0, "alice");
    let (bob_handle, bob) = user_on(1, "bob");
    let (_, carol) = user_on(2, "carol");

    cluster.stop_all();
    let on_n1 = cluster.thread_on(1, 1);
    let on_n2 = cluster.thread_on(2, 1);
    plant_group(
        &cluster.nodes[1].data_dir,
        on_n1,
        "on n1",
        &[bob, alice],
        &[(bob, "b1")],
    );
    plant_group(
        &cluster.nodes[2].data_dir,
        on_n2,
        "on n2",
        &[carol, alice],
        &[(carol, "c1")],
    );
    // Clocks of different nodes differ: n0's runs an hour ahead, so its watermark is above
    // every id n1 hands out meanwhile. One scalar watermark taken at alice's home would hide
    // n1's messages committed after n1's part was read.
    skew_clock(&cluster.nodes[0].data_dir, Duration::from_secs(3600));
    cluster.restart_all();

    let (answer, mut a) = cluster.authenticate_via(0, 0, login(&alice_handle, "d"));
    assert_eq!(auth_ok(answer).user, alice);
    let Frame::ThreadInfo(group) = a.request(CreateGroup {
        name: "on n0".into(),
        members: vec![],
    }) else {
        panic!("CREATE_GROUP failed");
    };
    util::send(&mut a, group.thread.id, 1, "a1");
    let (answer, mut b) = cluster.authenticate_via(1, 1, login(&bob_handle, "d"));
    auth_ok(answer);

    // Page 1: n0's part (node 0 in member-list order).
    let first = Sync {
        since: 0,
        after_thread: 0,
        after_message: 0,
        limit: 0,
        watermark: 0,
        vector: Tail(None),
    };
    let p1 = sync_page(&mut a, first);
    assert!(p1.more);
    assert_eq!(p1.vector.as_ref().unwrap().next_node, 1);
    assert!(bodies(&p1.messages).contains(&"a1".to_string()));

    // m1: committed on n1 between the first page and the continuation.
    let m1 = util::send(&mut b, on_n1, 1, "m1").message;
    let p2 = sync_page(&mut a, continuation(&p1, 0, &[]));
    assert_eq!(bodies(&p2.messages), ["b1", "m1"]);
    assert!(p2.more);
    assert_eq!(p2.vector.as_ref().unwrap().next_node, 2);

    // m2: committed on n1 after n1's part was read, below n0's watermark.
    let m2 = util::send(&mut b, on_n1, 2, "m2").message;
    let w = p2.vector.as_ref().unwrap().watermarks.clone();
    assert!(
        w[1] < m2 && m2 < w[0],
        "the race this guards against: n1's watermark {} < m2 {m2} < n0's {}",
        w[1],
        w[0]
    );
    let p3 = sync_page(&mut a, continuation(&p2, 0, &[]));
    assert_eq!(bodies(&p3.messages), ["c1"]);
    assert!(!p3.more);
    let done = p3.vector.as_ref().unwrap().watermarks.clone();
    assert!(
        done.iter().all(|&w| w != 0),
        "every node's watermark: {done:?}"
    );
    assert_eq!(done[..2], w[..2], "one walk keeps each node's watermark");
    assert_eq!(p3.watermark, *done.iter().min().unwrap());
    let walked: Vec<u64> = [&p1, &p2, &p3]
        .iter()
        .flat_map(|p| p.messages.iter().map(|m| m.id))
        .collect();
    assert_eq!(walked.iter().filter(|&&id| id == m1).count(), 1);
    assert!(!walked.contains(&m2));

    // The next sync, from the vector, returns m2, and only it; the one after, nothing.
    let (messages, last) = sync_walk(&mut a, p3.watermark, &done);
    assert_eq!(messages.iter().map(|m| m.id).collect::<Vec<_>>(), [m2]);
    let again = last.vector.as_ref().unwrap().watermarks.clone();
    let (messages, _) = sync_walk(&mut a, last.watermark, &again);
    assert!(
        messages.is_empty(),
        "nothing twice: {:?}",
        bodies(&messages)
    );
}

/// `frame` on `conn`, which must be answered `UNAVAILABLE` naming `node` within 2 s.
fn unavailable_within_2s(conn: &mut TestConn, frame: impl Into<Frame>, node: &str) {
    let frame = frame.into();
    let what = frame.name();
    let started = std::time::Instant::now();
    let answer = conn.request(frame);
    let took = started.elapsed();
    let message = error_message(&answer, ErrorCode::Unavailable);
    assert!(
        message.contains(&format!("node {node}")),
        "{what}: {message}"
    );
    assert!(
        took < Duration::from_secs(2),
        "{what} answered after {took:?}"
    );
}

#[test]
fn reads_answer_unavailable_within_2s_naming_a_node_that_is_down() {
    use courier_protocol::{CreateGroup, ListThreads, Sync, Tail};
    let cluster = Cluster::start();
    let handle = cluster.handle_on(0, "alice");
    let (answer, mut a) = cluster.authenticate_via(0, 0, register(&handle, "d"));
    auth_ok(answer);
    let Frame::ThreadInfo(group) = a.request(CreateGroup {
        name: "here".into(),
        members: vec![],
    }) else {
        panic!("CREATE_GROUP failed");
    };
    let group = group.thread.id;
    let list = ListThreads {
        before_msg_id: 0,
        before_thread: 0,
        limit: 0,
    };
    let sync = Sync {
        since: 0,
        after_thread: 0,
        after_message: 0,
        limit: 0,
        watermark: 0,
        vector: Tail(None),
    };
    // Every node up: both reads answer, over every node.
    assert!(matches!(
        request_when_linked(&mut a, list.clone()),
        Frame::ThreadList(_)
    ));
    sync_walk(&mut a, 0, &[]);
    // A first page is alice's part on n0; its continuation needs n1, then n2.
    let first = sync_page(&mut a, sync);
    assert_eq!(first.vector.as_ref().unwrap().next_node, 1);

    // A node that stopped answering but whose links look up yet (SIGSTOP: no RST, no FIN):
    // the read waits for its part until the deadline, and no longer.
    cluster.nodes[1].signal(libc::SIGSTOP);
    unavailable_within_2s(&mut a, list.clone(), "n1");
    unavailable_within_2s(&mut a, continuation(&first, 0, &[]), "n1");
    cluster.nodes[1].signal(libc::SIGCONT);
    assert!(matches!(
        request_when_linked(&mut a, list.clone()),
        Frame::ThreadList(_)
    ));

    // A node killed (SIGKILL by PID): its links reset, so the answer comes at once.
    cluster.nodes[2].kill();
    unavailable_within_2s(&mut a, list.clone(), "n2");
    // n1's part is empty, so the walk goes on to n2 in the same page.
    unavailable_within_2s(&mut a, continuation(&first, 0, &[]), "n2");
    // What does not need it keeps working.
    util::send(&mut a, group, 1, "still here");
    a.ping();
}
