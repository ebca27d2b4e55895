//! Presence across nodes: three `courier serve` nodes on loopback. A user's presence is known on
//! the user's home only; a subscriber on another node queries it and watches it through its own
//! node (ARCHITECTURE.md, "Cluster", presence).

mod util;

use std::time::{Duration, Instant};

use courier_protocol::{
    ContactAdd, ErrorCode, Frame, Presence, PresenceList, PresencePush, PresenceQuery,
    PresenceSubscribe,
};
use util::cluster::{auth_ok, login, Cluster, WAIT};
use util::{Server, TestConn};

/// A user homed on `node`, registered and connected there: (connection, id, handle).
fn user_on(cluster: &Cluster, node: usize, prefix: &str) -> (TestConn, u64, String) {
    let handle = cluster.handle_on(node, prefix);
    let (conn, id) = cluster.user_on(node, prefix);
    (conn, id, handle)
}

/// `handle`, homed on `node`, connects again (a new device session).
fn log_in(cluster: &Cluster, node: usize, handle: &str, device: &str) -> TestConn {
    let (answer, conn) = cluster.authenticate_via(node, node, login(handle, device));
    auth_ok(answer);
    conn
}

fn add_contacts(c: &mut TestConn, users: &[u64]) {
    for &user in users {
        let answer = c.request(ContactAdd { user });
        assert!(
            matches!(answer, Frame::Done(_)),
            "CONTACT_ADD {user}: {answer:?}"
        );
    }
}

fn query(c: &mut TestConn, users: &[u64]) -> Frame {
    c.request(PresenceQuery {
        users: users.to_vec(),
    })
}

fn entries(answer: Frame) -> Vec<Presence> {
    match answer {
        Frame::PresenceList(PresenceList { entries }) => entries,
        other => panic!("expected PRESENCE_LIST, got {other:?}"),
    }
}

fn subscribe(c: &mut TestConn, users: &[u64]) {
    let answer = c.request(PresenceSubscribe {
        users: users.to_vec(),
    });
    assert!(matches!(answer, Frame::Done(_)), "{answer:?}");
}

/// The next `PRESENCE_PUSH` saying `user` is `online` (others are skipped).
fn expect_presence(c: &mut TestConn, user: u64, online: bool, why: &str) -> Presence {
    let push = c.push_where(WAIT, |f| {
        matches!(f, Frame::PresencePush(PresencePush { presence }) if presence.user == user && presence.online == online)
    });
    match push {
        Some(Frame::PresencePush(p)) => p.presence,
        _ => panic!("no PRESENCE_PUSH {{{user}, online: {online}}}: {why}"),
    }
}

/// Waits until `metric{peer="peer"}` on `node` is `value`.
fn wait_metric(node: &Server, metric: &str, peer: &str, value: u64) {
    let line = format!("{metric}{{peer=\"{peer}\"}} {value}\n");
    let deadline = Instant::now() + WAIT;
    loop {
        let text = node.metrics();
        if text.contains(&line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no `{}` in the metrics:\n{}",
            line.trim(),
            text.lines()
                .filter(|l| l.starts_with(metric))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_query_answers_users_of_other_nodes_as_their_homes_know_them_in_the_order_asked() {
    let cluster = Cluster::start();
    let (mut alice, _, _) = user_on(&cluster, 0, "alice");
    let (_bob, bob, _) = user_on(&cluster, 1, "bob");
    let (carol_conn, carol, _) = user_on(&cluster, 2, "carol");
    let (dave_conn, dave, _) = user_on(&cluster, 0, "dave");
    add_contacts(&mut alice, &[bob, carol, dave]);
    let before = courier::clock::wall_us();
    drop(carol_conn);
    drop(dave_conn);

    // carol's and dave's homes see their connections close, and commit their last seen
    // times, a moment later.
    let deadline = Instant::now() + WAIT;
    let got = loop {
        let got = entries(query(&mut alice, &[carol, bob, dave]));
        let settled = |p: &Presence| p.user == bob || (!p.online && p.last_seen >= before);
        if got.iter().all(settled) || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let users: Vec<u64> = got.iter().map(|p| p.user).collect();
    assert_eq!(users, vec![carol, bob, dave], "in the order asked");
    assert!(!got[0].online, "carol (n2) went offline: {got:?}");
    assert!(
        got[0].last_seen >= before,
        "carol's last seen is n2's: {got:?}"
    );
    assert!(got[1].online, "bob is online on n1: {got:?}");
    assert!(!got[2].online && got[2].last_seen >= before, "{got:?}");

    // Contacts only, as on one node: the caller's contacts live on its home.
    let (_erin, erin, _) = user_on(&cluster, 2, "erin");
    let answer = query(&mut alice, &[bob, erin]);
    assert_eq!(
        util::error_code(&answer),
        ErrorCode::NotContact,
        "{answer:?}"
    );
}

#[test]
fn a_subscriber_gets_online_and_offline_pushes_of_a_user_of_another_node() {
    let cluster = Cluster::start();
    let (mut alice, _, _) = user_on(&cluster, 0, "alice");
    let (bob_conn, bob, bob_handle) = user_on(&cluster, 1, "bob");
    drop(bob_conn);
    add_contacts(&mut alice, &[bob]);
    let deadline = Instant::now() + WAIT;
    while entries(query(&mut alice, &[bob]))[0].online {
        assert!(Instant::now() < deadline, "bob never went offline");
        std::thread::sleep(Duration::from_millis(20));
    }
    subscribe(&mut alice, &[bob]);
    // Bob's home learns of the watch over the links: wait for its state (offline) first, so
    // that what follows is a change, not the state the watch is answered with.
    expect_presence(&mut alice, bob, false, "bob's state, answering the watch");

    let bob_conn = log_in(&cluster, 1, &bob_handle, "d");
    expect_presence(&mut alice, bob, true, "bob connected to n1");
    let online_at = courier::clock::wall_us();
    drop(bob_conn);
    let p = expect_presence(&mut alice, bob, false, "bob's only device closed");
    assert!(p.last_seen + 1_000_000 >= online_at, "{p:?}");

    // Several of bob's changes, pushed as they come, the last one last.
    let bob_conn = log_in(&cluster, 1, &bob_handle, "d");
    expect_presence(&mut alice, bob, true, "bob is back");
    drop(bob_conn);
    expect_presence(&mut alice, bob, false, "bob left again");
}

#[test]
fn the_last_local_subscriber_leaving_removes_the_watch_on_the_home() {
    let cluster = Cluster::start_with(&["--metrics", "127.0.0.1:0"]);
    let (mut alice, _, alice_handle) = user_on(&cluster, 0, "alice");
    let (bob_conn, bob, _) = user_on(&cluster, 1, "bob");
    add_contacts(&mut alice, &[bob]);
    let mut alice2 = log_in(&cluster, 0, &alice_handle, "d2");

    subscribe(&mut alice, &[bob]);
    wait_metric(&cluster.nodes[0], "courier_presence_watching", "n1", 1);
    wait_metric(
        &cluster.nodes[1],
        "courier_presence_remote_watches",
        "n0",
        1,
    );
    // A second subscriber of n0 to the same user: still one watch (the node watches, not
    // each connection).
    subscribe(&mut alice2, &[bob]);
    subscribe(&mut alice2, &[bob]);
    wait_metric(
        &cluster.nodes[1],
        "courier_presence_remote_watches",
        "n0",
        1,
    );
    wait_metric(&cluster.nodes[0], "courier_presence_watching", "n1", 1);
    // Nothing else watches anything.
    wait_metric(
        &cluster.nodes[2],
        "courier_presence_remote_watches",
        "n0",
        0,
    );
    wait_metric(
        &cluster.nodes[1],
        "courier_presence_remote_watches",
        "n2",
        0,
    );

    drop(alice);
    // Once n0 closed alice's connection, alice2 still subscribes: the watch stays, and bob's
    // changes still reach n0.
    let deadline = Instant::now() + WAIT;
    while Server::metric_sum(
        &cluster.nodes[0].metrics(),
        "courier_authenticated_sessions",
    ) != 1.0
    {
        assert!(
            Instant::now() < deadline,
            "n0 did not close alice's connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_metric(&cluster.nodes[0], "courier_presence_watching", "n1", 1);
    wait_metric(
        &cluster.nodes[1],
        "courier_presence_remote_watches",
        "n0",
        1,
    );
    drop(bob_conn);
    expect_presence(&mut alice2, bob, false, "bob left, alice2 still subscribes");
    drop(alice2);
    wait_metric(&cluster.nodes[0], "courier_presence_watching", "n1", 0);
    wait_metric(
        &cluster.nodes[1],
        "courier_presence_remote_watches",
        "n0",
        0,
    );
}

#[test]
fn a_killed_home_is_unavailable_then_relinks_and_its_missed_change_is_corrected() {
    let mut cluster = Cluster::start_with(&["--metrics", "127.0.0.1:0"]);
    let (mut alice, _, _) = user_on(&cluster, 0, "alice");
    let (bob_conn, bob, bob_handle) = user_on(&cluster, 1, "bob");
    add_contacts(&mut alice, &[bob]);
    subscribe(&mut alice, &[bob]);
    expect_presence(&mut alice, bob, true, "bob's state, answering the watch");

    // n1 dies with bob connected: it never says bob went offline.
    cluster.nodes[1].kill();
    drop(bob_conn);
    let asked = Instant::now();
    let answer = query(&mut alice, &[bob]);
    assert_eq!(
        util::error_code(&answer),
        ErrorCode::Unavailable,
        "{answer:?}"
    );
    let Frame::ErrorReply(e) = &answer else {
        unreachable!()
    };
    assert!(e.message.contains("node n1 "), "{}", e.message);
    assert!(asked.elapsed() <= Duration::from_millis(2300));

    cluster.nodes[1].restart();
    // Once the links are back, n0 sends its watches again and n1 answers with bob's state
    // now: offline, numbered by the new run of n1 (lower than the old run's numbers).
    expect_presence(
        &mut alice,
        bob,
        false,
        "bob's missed offline, after n1 restarted",
    );
    wait_metric(
        &cluster.nodes[1],
        "courier_presence_remote_watches",
        "n0",
        1,
    );
    let got = entries(query(&mut alice, &[bob]));
    assert!(!got[0].online, "{got:?}");

    // And the subscription works again.
    let bob_conn = log_in(&cluster, 1, &bob_handle, "d");
    expect_presence(&mut alice, bob, true, "bob connected to the restarted n1");
    drop(bob_conn);
    expect_presence(&mut alice, bob, false, "bob left the restarted n1");
}

#[test]
fn a_killed_subscribers_node_loses_its_watches_on_the_home() {
    let mut cluster = Cluster::start_with(&["--metrics", "127.0.0.1:0"]);
    let (mut alice, _, _) = user_on(&cluster, 0, "alice");
    let (_bob, bob, _) = user_on(&cluster, 1, "bob");
    add_contacts(&mut alice, &[bob]);
    subscribe(&mut alice, &[bob]);
    wait_metric(
        &cluster.nodes[1],
        "courier_presence_remote_watches",
        "n0",
        1,
    );

    // n0 dies: its links to n1 reset, and n1 forgets what n0 watched.
    cluster.nodes[0].kill();
    drop(alice);
    wait_metric(
        &cluster.nodes[1],
        "courier_presence_remote_watches",
        "n0",
        0,
    );
    // Back without subscribers: it watches nothing (its first watch set is empty).
    cluster.nodes[0].restart();
    cluster.wait_linked();
    wait_metric(&cluster.nodes[0], "courier_presence_watching", "n1", 0);
    wait_metric(
        &cluster.nodes[1],
        "courier_presence_remote_watches",
        "n0",
        0,
    );
}
