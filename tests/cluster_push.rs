//! Push notifications in a cluster, over real TCP: three nodes, each with its own local HTTP
//! receiver (tiny_http) as its push gateway, so a test sees which node sent a notification.
//! The thread is owned by n0, the members who should be notified are homed on n1, the sender
//! on n2: the owner commits the message, and the members' home decides and notifies.
//!
//! Orderings are driven by hand, never by sleeping: each notifier walks its outbox in user-id
//! order, and bob's id is below carol's, so "the first notification n1 sends is carol's" proves
//! that no row was queued for bob by the same message.

mod util;

use std::time::{Duration, Instant};

use courier::cluster::partition;
use courier_protocol::{ContactAdd, CreateGroup, Frame, PresenceQuery, SetThreadState};
use serde_json::{json, Value};
use util::cluster::{auth_ok, register, Cluster};
use util::push::{registered, Gateway, POST_TIMEOUT};
use util::{send, TestConn};

/// Gateway `g`'s next notification's `notification` object, answered 200.
fn next(g: &Gateway) -> Value {
    let post = g.next();
    let n = post.n().clone();
    post.ok();
    n
}

/// (event, room, unread, push keys) of a notification.
fn summary(n: &Value) -> (u64, u64, u64, Vec<String>) {
    let id = |v: &Value| v.as_str().expect("an id").parse::<u64>().expect("decimal");
    let keys = n["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["pushkey"].as_str().expect("pushkey").to_owned())
        .collect();
    (
        id(&n["event_id"]),
        id(&n["room_id"]),
        n["counts"]["unread"].as_u64().expect("counts.unread"),
        keys,
    )
}

/// Three nodes, node `i` posting to `gateways[i]`.
fn cluster(gateways: &[Gateway]) -> Cluster {
    Cluster::start_each(|i| vec!["--push-gateway".into(), gateways[i].url.clone()])
}

/// A user homed on `node` whose id is above `above` (their handle's partition is not below
/// `above`'s, and they register after it).
fn user_above(cluster: &Cluster, node: usize, prefix: &str, above: u64) -> (TestConn, u64) {
    let handle = (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|h| {
            cluster.home_of_handle(h) == node && partition::of_handle(h) >= partition::of_id(above)
        })
        .unwrap();
    let (answer, conn) = cluster.authenticate_via(node, node, register(&handle, "d"));
    let user = auth_ok(answer).user;
    assert!(user > above);
    (conn, user)
}

/// Waits until `watcher` (a user of the same node as `user`) sees `user` offline.
fn wait_offline(watcher: &mut TestConn, user: u64) {
    assert!(matches!(
        watcher.request(ContactAdd { user }),
        Frame::Done(_)
    ));
    let deadline = Instant::now() + POST_TIMEOUT;
    loop {
        match watcher.request(PresenceQuery { users: vec![user] }) {
            Frame::PresenceList(p) if p.entries.iter().all(|e| !e.online) => return,
            Frame::PresenceList(_) => {}
            other => panic!("PRESENCE_QUERY: {other:?}"),
        }
        assert!(Instant::now() < deadline, "user {user} never went offline");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The people of every test: dave on n0 (who creates the group, so n0 owns it), bob and carol
/// on n1 with push keys (bob's id below carol's), a watcher on n1, alice on n2.
struct People {
    dave: TestConn,
    alice: TestConn,
    alice_id: u64,
    bob: TestConn,
    bob_id: u64,
    carol: TestConn,
    carol_id: u64,
    watcher: TestConn,
}

fn people(cluster: &Cluster) -> People {
    let (dave, _) = cluster.user_on(0, "dave");
    let (alice, alice_id) = cluster.user_on(2, "alice");
    let (mut bob, bob_id) = cluster.user_on(1, "bob");
    let (mut carol, carol_id) = user_above(cluster, 1, "carol", bob_id);
    let (watcher, _) = cluster.user_on(1, "watch");
    registered(&mut bob, "bob-key");
    registered(&mut carol, "carol-key");
    People {
        dave,
        alice,
        alice_id,
        bob,
        bob_id,
        carol,
        carol_id,
        watcher,
    }
}

/// A group created by dave (so owned by n0) with `members`.
fn group_on_n0(cluster: &Cluster, dave: &mut TestConn, members: Vec<u64>) -> u64 {
    let Frame::ThreadInfo(t) = dave.request(CreateGroup {
        name: "g".into(),
        members,
    }) else {
        panic!("CREATE_GROUP failed");
    };
    assert_eq!(cluster.home_of_id(t.thread.id), 0, "the group lives on n0");
    t.thread.id
}

#[test]
fn a_member_homed_on_another_node_than_the_thread_is_notified_by_their_home() {
    let gateways: Vec<Gateway> = (0..3).map(|_| Gateway::start()).collect();
    let cluster = cluster(&gateways);
    let mut p = people(&cluster);
    let group = group_on_n0(&cluster, &mut p.dave, vec![p.alice_id, p.bob_id]);
    drop(p.bob);
    wait_offline(&mut p.watcher, p.bob_id);

    let sent = send(&mut p.alice, group, 1, "to bob, offline on n1");
    let n = next(&gateways[1]);
    assert_eq!(
        summary(&n),
        (sent.message, group, 1, vec!["bob-key".to_owned()])
    );
    assert_eq!(n["sender"], json!(p.alice_id.to_string()));

    // Another message: notified again (the home's row was settled by the 200 above).
    let again = send(&mut p.alice, group, 2, "again");
    assert_eq!(summary(&next(&gateways[1])).0, again.message);
    drop(p.carol);
}

#[test]
fn a_member_online_on_their_home_is_not_notified_of_a_message_of_another_node() {
    let gateways: Vec<Gateway> = (0..3).map(|_| Gateway::start()).collect();
    let cluster = cluster(&gateways);
    let mut p = people(&cluster);
    let members = vec![p.alice_id, p.bob_id, p.carol_id];
    let group = group_on_n0(&cluster, &mut p.dave, members);
    drop(p.carol);
    wait_offline(&mut p.watcher, p.carol_id);

    // Bob is online on n1 with a registration, carol offline: one message, and n1's first
    // notification is carol's (a row for bob, a lower id, would have gone first).
    let sent = send(&mut p.alice, group, 1, "bob is online");
    assert_eq!(
        summary(&next(&gateways[1])),
        (sent.message, group, 1, vec!["carol-key".to_owned()])
    );
    // Bob's device got the message itself.
    let push = p
        .bob
        .push_where(POST_TIMEOUT, |f| matches!(f, Frame::MessagePush(_)));
    assert!(push.is_some(), "bob's device gets the push");
}

#[test]
fn a_member_who_muted_a_thread_of_another_node_is_not_notified_of_it() {
    let gateways: Vec<Gateway> = (0..3).map(|_| Gateway::start()).collect();
    let cluster = cluster(&gateways);
    let mut p = people(&cluster);
    let members = vec![p.alice_id, p.bob_id, p.carol_id];
    let group = group_on_n0(&cluster, &mut p.dave, members);
    // Bob mutes the group: the state is stored on n0, the group's owner.
    let mute = SetThreadState {
        thread: group,
        muted: true,
        hidden: false,
        label: String::new(),
    };
    assert!(matches!(p.bob.request(mute), Frame::Done(_)));
    drop(p.bob);
    drop(p.carol);
    wait_offline(&mut p.watcher, p.bob_id);
    wait_offline(&mut p.watcher, p.carol_id);

    let sent = send(&mut p.alice, group, 1, "bob muted this");
    assert_eq!(
        summary(&next(&gateways[1])),
        (sent.message, group, 1, vec!["carol-key".to_owned()])
    );
}
