//! Three `courier serve` nodes on loopback, configured as one cluster with `--peer`: where
//! accounts live, how clients are routed to them, and how requests and pushes cross nodes.
//! The clusters are encrypted (every node's key in the `--peer` list, links and clients on
//! Noise) but for one test that shows a plaintext cluster still works.

mod util;

use std::time::Duration;

use courier::cluster::partition;
use courier_protocol::{ErrorCode, Frame, Resume};
use util::cluster::{auth_ok, login, register, Cluster, WAIT};
use util::{Server, TestConn, PASSWORD};

#[test]
fn register_via_any_node_ends_on_the_home() {
    let cluster = Cluster::start();
    for home in 0..3 {
        for entry in 0..3 {
            let handle = cluster.handle_on(home, &format!("reg{entry}x"));
            let (answer, conn) = cluster.authenticate_via(entry, home, register(&handle, "d"));
            assert_eq!(
                conn.server_key(),
                cluster.key_of(home),
                "encrypted to the home, its key pinned"
            );
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
    // Each client pins the key of the node it first reaches; a REDIRECT names the home's.
    let pinned = |entry: usize| {
        ClientConfig::default().with_server_key(cluster.key_of(entry).expect("encrypted"))
    };
    let first = Client::connect(cluster.addrs[0], pinned(0)).unwrap();
    let registered = first.register(&handle, PASSWORD).unwrap();
    at_home(&first);
    let second = Client::connect(cluster.addrs[2], pinned(2)).unwrap();
    assert_eq!(
        second.login(&handle, PASSWORD).unwrap().user,
        registered.user
    );
    at_home(&second);
    // The login replaced the registration's token (one token per device name).
    let token = second.token().unwrap();
    let third = Client::connect(
        cluster.addrs[0],
        ClientConfig::reconnecting().with_server_key(cluster.key_of(0).expect("encrypted")),
    )
    .unwrap();
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
            .args(cluster.client_args(entry))
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

/// The same routing and chat across nodes with plaintext links and clients
/// (`--insecure-plaintext` on every node): REDIRECT names no key.
#[test]
fn a_plaintext_cluster_still_redirects_and_chats_across_nodes() {
    let cluster = Cluster::start_plaintext(&[]);
    assert_eq!(cluster.key_of(0), None);
    let handle = cluster.handle_on(1, "plain");
    let (answer, mut alice) = cluster.authenticate_via(0, 1, register(&handle, "d"));
    let alice_id = auth_ok(answer).user;
    let Frame::Redirect(redirect) = cluster.redirect_to(1) else {
        unreachable!()
    };
    assert!(redirect.key.is_empty(), "a plaintext REDIRECT names no key");
    assert!(alice.server_key().is_none(), "the connection is plaintext");
    let (mut bob, bob_id) = cluster.user_on(2, "plainbob");
    let thread = util::direct(&mut alice, bob_id);
    let sent = util::send(&mut alice, thread, 1, "in the clear");
    let push = bob.push_where(WAIT, |f| matches!(f, Frame::MessagePush(_)));
    assert!(
        matches!(&push, Some(Frame::MessagePush(p)) if p.message.id == sent.message && p.message.sender == alice_id),
        "{push:?}"
    );
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
fn threads_live_in_their_partitions_and_requests_for_other_nodes_are_forwarded() {
    use courier_protocol::{AddMembers, CreateGroup, LookupUser, OpenDirect};
    let cluster = Cluster::start();
    // Users of n0, and every pair of them: about a third of the pairs are homed on n0.
    let mut users: Vec<(TestConn, u64)> = (0..8)
        .map(|i| cluster.user_on(0, &format!("place{i}x")))
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

    // A direct thread homed on another node (even between two users of this one): created
    // there, in its pair's partition, and it works.
    let Frame::ThreadInfo(there) = users[k].0.request(OpenDirect { peer: ids[l] }) else {
        panic!("OPEN_DIRECT of a pair homed elsewhere failed");
    };
    let there = there.thread.id;
    assert_eq!(partition::of_id(there), partition::of_pair(ids[k], ids[l]));
    assert_eq!(cluster.home_of_id(there), pair_home((k, l)));
    util::send(&mut users[k].0, there, 1, "hi there");

    let alice = &mut users[0].0;
    // A group is homed with its creator, whatever its members' homes.
    let Frame::ThreadInfo(group) = alice.request(CreateGroup {
        name: "here".into(),
        members: vec![ids[1], ids[2]],
    }) else {
        panic!("CREATE_GROUP of local users failed");
    };
    let group = group.thread.id;
    assert_eq!(partition::of_id(group), partition::of_id(ids[0]));
    util::send(alice, group, 2, "hello group");
    let Frame::ThreadInfo(mixed) = alice.request(CreateGroup {
        name: "mixed".into(),
        members: vec![ids[1], far],
    }) else {
        panic!("CREATE_GROUP with a member of n1 failed");
    };
    assert_eq!(partition::of_id(mixed.thread.id), partition::of_id(ids[0]));
    let answer = alice.request(AddMembers {
        thread: group,
        members: vec![far],
    });
    assert!(matches!(answer, Frame::Done(_)), "{answer:?}");

    // A thread that does not exist on the node that would own it; a handle of another node.
    let elsewhere = (0..partition::PARTITIONS)
        .find(|&p| cluster.router.owner(p) == "n2")
        .unwrap();
    let answer = util::try_send(alice, partition::compose(elsewhere, 999_999), 3, "lost?");
    assert_eq!(
        util::error_code(&answer),
        ErrorCode::UnknownThread,
        "{answer:?}"
    );
    let Frame::User(found) = alice.request(LookupUser { handle: far_handle }) else {
        panic!("LOOKUP_USER of a handle of n1 failed");
    };
    assert_eq!(found.user.id, far);
    alice.ping();
}

/// A user of node `a` and a user of node `b` whose direct thread node `owner` owns (bobs are
/// registered until the pair hashes there).
fn pair_owned_by(
    cluster: &Cluster,
    a: usize,
    b: usize,
    owner: usize,
) -> ((TestConn, u64), (TestConn, u64)) {
    let ((alice, _), (bob, _)) = named_pair_owned_by(cluster, a, b, owner, "alice");
    (alice, bob)
}

/// A connected user, its id and its handle.
type Named = ((TestConn, u64), String);

/// [`pair_owned_by`] with each user's handle; the first user's handle starts with `prefix`.
fn named_pair_owned_by(
    cluster: &Cluster,
    a: usize,
    b: usize,
    owner: usize,
    prefix: &str,
) -> (Named, Named) {
    let alice_handle = cluster.handle_on(a, prefix);
    let alice = cluster.user_on(a, prefix);
    for i in 0.. {
        let bob_prefix = format!("{prefix}bob{i}x");
        let bob_handle = cluster.handle_on(b, &bob_prefix);
        let bob = cluster.user_on(b, &bob_prefix);
        let pair = partition::compose(partition::of_pair(alice.1, bob.1), 1);
        if cluster.home_of_id(pair) == owner {
            return ((alice, alice_handle), (bob, bob_handle));
        }
    }
    unreachable!()
}

/// The name `conn`'s user sees for `thread` in LIST_THREADS and in a whole SYNC.
fn names_listed_and_synced(conn: &mut TestConn, thread: u64) -> (String, String) {
    let Frame::ThreadList(list) = request_when_linked(
        conn,
        courier_protocol::ListThreads {
            before_msg_id: 0,
            before_thread: 0,
            limit: 0,
        },
    ) else {
        panic!("LIST_THREADS failed");
    };
    let listed = list
        .threads
        .iter()
        .find(|t| t.id == thread)
        .map(|t| t.name.clone())
        .expect("the direct thread is listed");
    let mut synced = None;
    let mut page = sync_page(
        conn,
        courier_protocol::Sync {
            since: 0,
            after_thread: 0,
            after_message: 0,
            limit: 0,
            watermark: 0,
            vector: courier_protocol::Tail::some(courier_protocol::SyncVector {
                since: vec![],
                watermarks: vec![],
                after_node: 0,
            }),
        },
    );
    loop {
        if let Some(t) = page.threads.iter().find(|t| t.id == thread) {
            synced = Some(t.name.clone());
        }
        if !page.more {
            break;
        }
        page = sync_page(conn, continuation(&page, 0, &[]));
    }
    (listed, synced.expect("the direct thread is synced"))
}

#[test]
fn a_direct_thread_is_named_after_the_peer_whichever_nodes_hold_the_users_and_the_thread() {
    use courier_protocol::{GetThread, OpenDirect};
    let cluster = Cluster::start();
    // Alice on n0, bob on n1; the thread on n2 (neither user's home), then on n1 (bob's).
    for (owner, prefix) in [(2, "ann"), (1, "amy")] {
        let (((mut alice, alice_id), alice_handle), ((mut bob, bob_id), bob_handle)) =
            named_pair_owned_by(&cluster, 0, 1, owner, prefix);
        let Frame::ThreadInfo(opened) = alice.request(OpenDirect { peer: bob_id }) else {
            panic!("OPEN_DIRECT failed");
        };
        let thread = opened.thread.id;
        assert_eq!(cluster.home_of_id(thread), owner);
        assert_eq!(opened.thread.name, bob_handle, "alice's OPEN_DIRECT answer");
        let Frame::ThreadInfo(opened) = bob.request(OpenDirect { peer: alice_id }) else {
            panic!("OPEN_DIRECT failed");
        };
        assert_eq!(
            (opened.thread.id, opened.thread.name.as_str()),
            (thread, alice_handle.as_str()),
            "bob's OPEN_DIRECT answer"
        );
        util::send(&mut alice, thread, 1, "hi");
        let Frame::ThreadInfo(info) = bob.request(GetThread { thread }) else {
            panic!("GET_THREAD failed");
        };
        assert_eq!(info.thread.name, alice_handle, "bob's GET_THREAD");
        assert_eq!(
            names_listed_and_synced(&mut alice, thread),
            (bob_handle.clone(), bob_handle),
            "alice's LIST_THREADS and SYNC (thread on n{owner})"
        );
        assert_eq!(
            names_listed_and_synced(&mut bob, thread),
            (alice_handle.clone(), alice_handle),
            "bob's LIST_THREADS and SYNC (thread on n{owner})"
        );
    }
}

fn history(c: &mut TestConn, thread: u64) -> Frame {
    c.request(courier_protocol::History {
        thread,
        anchor: 0,
        direction: courier_protocol::Direction::Forward,
        limit: 100,
    })
}

fn bodies(frame: &Frame) -> Vec<(u64, Vec<u8>)> {
    match frame {
        Frame::Messages(m) => m.messages.iter().map(|m| (m.id, m.body.to_vec())).collect(),
        other => panic!("expected MESSAGES, got {other:?}"),
    }
}

#[test]
fn two_users_of_two_nodes_chat_in_a_thread_a_third_node_owns() {
    use courier_protocol::{GetThread, OpenDirect, Readers, Receipt, ReceiptKind, Typing};
    let cluster = Cluster::start();
    let ((mut alice, alice_id), (mut bob, bob_id)) = pair_owned_by(&cluster, 0, 1, 2);
    let thread = util::direct(&mut alice, bob_id);
    assert_eq!(cluster.home_of_id(thread), 2, "the thread lives on n2");
    assert_eq!(
        util::direct(&mut bob, alice_id),
        thread,
        "both open the same thread"
    );

    // SENT comes back through n0 (after n2 committed), the push reaches bob on n1 once.
    let sent = util::send(&mut alice, thread, 7, "hello from n0");
    assert_eq!((sent.thread, sent.client_msg_id), (thread, 7));
    let push = bob
        .push_where(WAIT, |f| matches!(f, Frame::MessagePush(_)))
        .expect("bob's MESSAGE_PUSH");
    let Frame::MessagePush(push) = push else {
        unreachable!()
    };
    assert_eq!(
        (push.message.id, push.message.sender),
        (sent.message, alice_id)
    );
    // The same client message id again: the same message, not a second one.
    let again = util::send(&mut alice, thread, 7, "hello from n0");
    assert_eq!(again.message, sent.message);
    // A read receipt of bob reaches alice, and READERS sees it. (Before bob sends: sending
    // moves the sender's own read cursor.)
    let answer = bob.request(Receipt {
        thread,
        kind: ReceiptKind::Read,
        up_to: sent.message,
    });
    assert!(matches!(answer, Frame::Done(_)), "{answer:?}");
    let receipt = alice
        .push_where(
            WAIT,
            |f| matches!(f, Frame::ReceiptPush(r) if r.kind == ReceiptKind::Read),
        )
        .expect("alice's read receipt");
    let Frame::ReceiptPush(receipt) = receipt else {
        unreachable!()
    };
    assert_eq!(
        (receipt.thread, receipt.user, receipt.up_to),
        (thread, bob_id, sent.message)
    );
    let Frame::ReadersList(readers) = alice.request(Readers {
        thread,
        message: sent.message,
    }) else {
        panic!("READERS failed")
    };
    assert_eq!(readers.read, vec![bob_id]);
    let reply = util::send(&mut bob, thread, 1, "hello from n1");
    let expected = vec![
        (sent.message, b"hello from n0".to_vec()),
        (reply.message, b"hello from n1".to_vec()),
    ];
    // HISTORY (a read on n2's read workers) on both sides, the duplicate not in it.
    assert_eq!(bodies(&history(&mut alice, thread)), expected);
    assert_eq!(bodies(&history(&mut bob, thread)), expected);

    let Frame::ThreadInfo(info) = alice.request(GetThread { thread }) else {
        panic!("GET_THREAD failed")
    };
    assert_eq!(info.thread.last_msg_id, reply.message);
    // TYPING is pushed, never answered.
    alice.send_request(Typing {
        thread,
        active: true,
    });
    let typing = bob.push_where(WAIT, |f| matches!(f, Frame::TypingPush(_)));
    assert!(matches!(typing, Some(Frame::TypingPush(t)) if t.user == alice_id && t.active));

    // Errors are those of a single node: a stranger of n2 is not a member, on n0 neither.
    for node in [0, 2] {
        let (mut carol, _) = cluster.user_on(node, &format!("carol{node}x"));
        let answer = util::try_send(&mut carol, thread, 1, "let me in");
        assert_eq!(
            util::error_code(&answer),
            ErrorCode::NotMember,
            "{answer:?}"
        );
        assert_eq!(
            util::error_code(&history(&mut carol, thread)),
            ErrorCode::NotMember
        );
        let answer = carol.request(OpenDirect { peer: alice_id });
        assert!(matches!(answer, Frame::ThreadInfo(_)), "{answer:?}");
    }
    alice.ping();
    bob.ping();
}

#[test]
fn a_group_with_members_on_three_nodes_gets_each_message_once_per_device() {
    use courier_protocol::CreateGroup;
    let cluster = Cluster::start_with(&["--metrics", "127.0.0.1:0"]);
    let (mut bob, bob_id) = cluster.user_on(1, "gbob");
    let (mut alice, alice_id) = cluster.user_on(0, "galice");
    let (mut carol, carol_id) = cluster.user_on(2, "gcarol");
    let (mut dave, dave_id) = cluster.user_on(0, "gdave");
    // Second devices: alice's (on n0, like the sending one) and bob's (on n1).
    let handle = |c: &Cluster, node, prefix| c.handle_on(node, prefix);
    let (answer, mut alice2) =
        cluster.authenticate_via(0, 0, login(&handle(&cluster, 0, "galice"), "d2"));
    assert_eq!(auth_ok(answer).user, alice_id);
    let (answer, mut bob2) =
        cluster.authenticate_via(1, 1, login(&handle(&cluster, 1, "gbob"), "d2"));
    assert_eq!(auth_ok(answer).user, bob_id);
    // The group lives on n1, with its creator; alice sends from n0.
    let Frame::ThreadInfo(group) = bob.request(CreateGroup {
        name: "three nodes".into(),
        members: vec![alice_id, carol_id, dave_id],
    }) else {
        panic!("CREATE_GROUP across nodes failed");
    };
    let group = group.thread.id;
    assert_eq!(cluster.home_of_id(group), 1);
    let before = Server::metric_sum(
        &cluster.nodes[1].metrics(),
        "courier_peer_push_batches_total",
    );
    let sent: Vec<u64> = (1..=3)
        .map(|i| util::send(&mut alice, group, i, &format!("m{i}")).message)
        .collect();
    // A last message on the same thread: its push follows the others on every link (one lane
    // per thread), so whatever a device got before it is everything it gets.
    let marker = util::send(&mut alice, group, 4, "marker").message;
    let from_alice_until = |c: &mut TestConn, marker: u64| {
        let mut got = Vec::new();
        loop {
            match c.push_where(WAIT, |f| matches!(f, Frame::MessagePush(_))) {
                Some(Frame::MessagePush(p)) if p.message.id == marker => return got,
                Some(Frame::MessagePush(p)) if p.message.sender == alice_id => {
                    got.push(p.message.id)
                }
                Some(_) => {}
                None => panic!("no marker push; got {got:?}"),
            }
        }
    };
    for (who, c) in [
        ("alice's other device", &mut alice2),
        ("bob", &mut bob),
        ("bob's other device", &mut bob2),
        ("carol", &mut carol),
        ("dave", &mut dave),
    ] {
        assert_eq!(from_alice_until(c, marker), sent, "{who}");
    }
    // The sending device got SENT, never a push of its own messages.
    let marker2 = util::send(&mut bob, group, 1, "marker").message;
    assert_eq!(from_alice_until(&mut alice, marker2), Vec::<u64>::new());
    // One batch per node per push: 5 pushes to n0 and to n2.
    let after = Server::metric_sum(
        &cluster.nodes[1].metrics(),
        "courier_peer_push_batches_total",
    );
    assert_eq!(after - before, 10.0);
}

#[test]
fn users_of_other_nodes_are_checked_and_described_as_on_one_node() {
    use courier_protocol::{AddMembers, ContactAdd, CreateGroup, GetUsers, LookupUser, OpenDirect};
    let cluster = Cluster::start();
    let (mut alice, alice_id) = cluster.user_on(0, "ualice");
    let (mut bob, bob_id) = cluster.user_on(1, "ubob");
    let (mut carol, carol_id) = cluster.user_on(2, "ucarol");
    // Ids no one has, in partitions of n1 and n2.
    let ghost_on = |node: &str| {
        let p = (0..partition::PARTITIONS)
            .find(|&p| cluster.router.owner(p) == node)
            .unwrap();
        partition::compose(p, 999_999)
    };
    let (ghost1, ghost2) = (ghost_on("n1"), ghost_on("n2"));
    let code = |f: &Frame| util::error_code(f);

    assert_eq!(
        code(&alice.request(OpenDirect { peer: ghost1 })),
        ErrorCode::UnknownUser
    );
    assert_eq!(
        code(&alice.request(OpenDirect { peer: ghost2 })),
        ErrorCode::UnknownUser
    );
    let group = |c: &mut TestConn, members: Vec<u64>| {
        c.request(CreateGroup {
            name: "g".into(),
            members,
        })
    };
    assert_eq!(
        code(&group(&mut alice, vec![bob_id, ghost2])),
        ErrorCode::UnknownUser
    );
    let Frame::ThreadInfo(g) = group(&mut alice, vec![bob_id, carol_id]) else {
        panic!("CREATE_GROUP of users of three nodes failed");
    };
    let g = g.thread.id;
    let add = |c: &mut TestConn, members: Vec<u64>| c.request(AddMembers { thread: g, members });
    assert_eq!(code(&add(&mut alice, vec![ghost1])), ErrorCode::UnknownUser);
    // The engine's order of checks holds: a member who is not an admin hears NOT_ADMIN, not
    // UNKNOWN_USER, although the user is checked (on n1) before the request reaches n0.
    assert_eq!(code(&add(&mut carol, vec![ghost1])), ErrorCode::NotAdmin);
    assert_eq!(
        code(&add(&mut bob, vec![ghost2, carol_id])),
        ErrorCode::NotAdmin
    );

    assert!(matches!(
        alice.request(ContactAdd { user: bob_id }),
        Frame::Done(_)
    ));
    assert_eq!(
        code(&alice.request(ContactAdd { user: ghost2 })),
        ErrorCode::UnknownUser
    );
    // The contact book lives with alice on n0; the handles of her contacts on n1 and n2 come
    // from their homes, in the book's order (by id).
    assert!(matches!(
        alice.request(ContactAdd { user: carol_id }),
        Frame::Done(_)
    ));
    let Frame::Contacts(book) = alice.request(courier_protocol::ContactList {}) else {
        panic!("CONTACT_LIST across nodes failed");
    };
    let mut expected = vec![
        (bob_id, cluster.handle_on(1, "ubob")),
        (carol_id, cluster.handle_on(2, "ucarol")),
    ];
    expected.sort_unstable();
    let listed: Vec<(u64, String)> = book.users.into_iter().map(|u| (u.id, u.handle)).collect();
    assert_eq!(listed, expected);

    let bob_handle = cluster.handle_on(1, "ubob");
    let Frame::User(found) = carol.request(LookupUser {
        handle: bob_handle.clone(),
    }) else {
        panic!("LOOKUP_USER of a user of n1 from n2 failed");
    };
    assert_eq!(found.user.id, bob_id);
    let nobody = cluster.handle_on(1, "nobody");
    assert_eq!(
        code(&carol.request(LookupUser { handle: nobody })),
        ErrorCode::UnknownUser
    );

    // GET_USERS across nodes: in the order asked, unknown ids left out, repeats kept.
    let Frame::Users(users) = alice.request(GetUsers {
        users: vec![bob_id, ghost1, alice_id, carol_id, bob_id],
    }) else {
        panic!("GET_USERS across nodes failed");
    };
    let ids: Vec<u64> = users.users.iter().map(|u| u.id).collect();
    assert_eq!(ids, vec![bob_id, alice_id, carol_id, bob_id]);
    assert_eq!(users.users[0].handle, bob_handle);
    let too_many = vec![bob_id; 1001];
    assert_eq!(
        code(&alice.request(GetUsers { users: too_many })),
        ErrorCode::InvalidArgument
    );
    alice.ping();
}
/// Repeats `request` while it is answered UNAVAILABLE (links re-forming after a node came
/// back), at most 20 s; returns the first other answer.
fn until_linked(mut request: impl FnMut() -> Frame) -> Frame {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = request();
        if !matches!(&answer, Frame::ErrorReply(e) if e.code == ErrorCode::Unavailable as u16) {
            return answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still unreachable: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_that_is_down_fails_its_requests_within_2_s_and_serves_again_after_a_restart() {
    use courier_protocol::CreateGroup;
    use std::time::Instant;
    let mut cluster = Cluster::start();
    let ((mut alice, _), (mut bob, bob_id)) = pair_owned_by(&cluster, 0, 1, 2);
    let thread = util::direct(&mut alice, bob_id);
    util::send(&mut alice, thread, 1, "before");
    // A group of alice's lives on n0: it needs n0 and n1 only.
    let Frame::ThreadInfo(group) = alice.request(CreateGroup {
        name: "n0 and n1".into(),
        members: vec![bob_id],
    }) else {
        panic!("CREATE_GROUP failed");
    };
    let group = group.thread.id;

    cluster.nodes[2].kill();
    let asked = Instant::now();
    let answer = util::try_send(&mut alice, thread, 2, "while n2 is down");
    let took = asked.elapsed();
    let message = error_message(&answer, ErrorCode::Unavailable);
    assert!(message.contains("node n2 "), "{message}");
    // 2 s is the bound of the origin's wait; the scheduler may add a little.
    assert!(
        took <= Duration::from_millis(2300),
        "answered after {took:?}"
    );

    // What does not touch n2 keeps working, pushes included.
    let sent = util::send(&mut alice, group, 1, "n2 is down");
    let push = bob.push_where(
        WAIT,
        |f| matches!(f, Frame::MessagePush(p) if p.message.id == sent.message),
    );
    assert!(push.is_some(), "bob's push on n1");

    cluster.nodes[2].restart();
    // The same SEND (same client message id) as the one that failed, once the links are back.
    let Frame::Sent(sent) =
        until_linked(|| util::try_send(&mut alice, thread, 2, "while n2 is down"))
    else {
        panic!("the SEND after n2 restarted failed");
    };
    let push = bob.push_where(
        WAIT,
        |f| matches!(f, Frame::MessagePush(p) if p.message.id == sent.message),
    );
    assert!(push.is_some(), "bob's push from n2 after its restart");
    let expected: Vec<Vec<u8>> = vec![b"before".to_vec(), b"while n2 is down".to_vec()];
    // bob's HISTORY goes over n1's own links to n2, which may still be re-forming.
    let got: Vec<Vec<u8>> = bodies(&until_linked(|| history(&mut bob, thread)))
        .into_iter()
        .map(|m| m.1)
        .collect();
    assert_eq!(got, expected, "stored once");
}

#[test]
fn a_node_that_stops_answering_is_answered_unavailable_after_2_s_and_a_retry_is_stored_once() {
    use std::time::Instant;
    let cluster = Cluster::start();
    let ((mut alice, _), (mut bob, bob_id)) = pair_owned_by(&cluster, 0, 1, 2);
    let thread = util::direct(&mut alice, bob_id);
    // Stopped, n2 keeps its sockets: the link stays up for 1.5 s of silence, so the SEND is
    // forwarded and nothing answers it.
    cluster.nodes[2].signal(libc::SIGSTOP);
    cluster.nodes[2].wait_stopped();
    let asked = Instant::now();
    let answer = util::try_send(&mut alice, thread, 1, "maybe");
    let took = asked.elapsed();
    cluster.nodes[2].signal(libc::SIGCONT);
    let message = error_message(&answer, ErrorCode::Unavailable);
    assert!(
        message.contains("node n2 of the cluster did not answer within 2 s")
            && message.contains("may or may not have been applied"),
        "{message}"
    );
    assert!(
        took >= Duration::from_millis(1900) && took <= Duration::from_millis(2300),
        "answered after {took:?}"
    );
    // n2 may have stored it when it resumed; the client's retry (same client message id) is
    // answered SENT once the links are back, and the thread holds the message once.
    let Frame::Sent(sent) = until_linked(|| util::try_send(&mut alice, thread, 1, "maybe")) else {
        panic!("the retry failed");
    };
    let stored = bodies(&until_linked(|| history(&mut bob, thread)));
    assert_eq!(stored, vec![(sent.message, b"maybe".to_vec())]);
    alice.ping();
}

#[test]
fn a_group_naming_more_than_100_users_of_another_node_is_checked_in_parts() {
    use courier_protocol::CreateGroup;
    let cluster = Cluster::start();
    let (mut alice, _) = cluster.user_on(0, "palice");
    // 130 users of n1: two internal GET_USERS to n1 (100 + 30).
    let mut members: Vec<u64> = (0..130)
        .map(|i| cluster.user_on(1, &format!("pm{i}x")).1)
        .collect();
    let Frame::ThreadInfo(group) = alice.request(CreateGroup {
        name: "big".into(),
        members: members.clone(),
    }) else {
        panic!("CREATE_GROUP of 130 users of n1 failed");
    };
    assert_eq!(group.thread.members.len(), 131);
    // One id no one has, in the second part (the largest id of n1: the last partition it
    // owns): the whole request is refused.
    let p = (0..partition::PARTITIONS)
        .rev()
        .find(|&p| cluster.router.owner(p) == "n1")
        .unwrap();
    members.push(partition::compose(p, 999_999));
    let answer = alice.request(CreateGroup {
        name: "big".into(),
        members,
    });
    assert_eq!(util::error_code(&answer), ErrorCode::UnknownUser);
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
            seq: ids.len() as u64 + 1,
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
        countable: ids.len() as u64,
        handles: Vec::new(),
        hidden_upto: 0,
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

fn body_texts(messages: &[courier_protocol::Message]) -> Vec<String> {
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
    assert!(body_texts(&p1.messages).contains(&"a1".to_string()));

    // m1: committed on n1 between the first page and the continuation.
    let m1 = util::send(&mut b, on_n1, 1, "m1").message;
    let p2 = sync_page(&mut a, continuation(&p1, 0, &[]));
    assert_eq!(body_texts(&p2.messages), ["b1", "m1"]);
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
    assert_eq!(body_texts(&p3.messages), ["c1"]);
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
        body_texts(&messages)
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
    cluster.nodes[1].wait_stopped();
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
