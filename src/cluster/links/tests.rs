//! Link endpoints in one process on loopback: each test node is a link thread with its own
//! listener, and inbound payloads arrive on a channel.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use courier_protocol::noise::Keypair;
use courier_protocol::peer::{
    decode_peer, encode_peer, Forward, Origin, PeerFrame, PeerHello, PeerWelcome, PushBatch,
    PEER_VERSION,
};
use crossbeam_channel::Receiver;

use super::*;

type Arrivals = Receiver<(NodeIndex, Payload)>;

/// A listener on a free loopback port.
fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// Binds `addr` again after its endpoint stopped (its old links may linger in TIME_WAIT).
fn rebind(addr: SocketAddr) -> TcpListener {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.listen(128).unwrap();
    socket.into()
}

fn members(ids: &[&str], addrs: &[SocketAddr]) -> Vec<Node> {
    ids.iter()
        .zip(addrs)
        .map(|(id, addr)| Node {
            id: (*id).to_owned(),
            client_addr: format!("127.0.0.1:{}", 7000 + addr.port() % 1000),
            cluster_addr: *addr,
            key: None,
        })
        .collect()
}

/// A fixed key pair per test node (distinct per `seed`).
fn keypair(seed: u8) -> Keypair {
    Keypair::from_private([seed; 32])
}

/// `nodes` with the key of `keypair(i + 1)` for the i-th node, and the configs that hold them.
fn keyed(mut nodes: Vec<Node>) -> (Vec<Node>, Vec<LinkConfig>) {
    let configs = nodes
        .iter_mut()
        .enumerate()
        .map(|(i, n)| {
            let pair = keypair(i as u8 + 1);
            n.key = Some(pair.public());
            LinkConfig {
                noise: Some(pair),
                ..LinkConfig::default()
            }
        })
        .collect();
    (nodes, configs)
}

struct Endpoint {
    links: Links,
    thread: LinkThread,
    arrivals: Arrivals,
}

fn start(nodes: &[Node], local: &str, listener: TcpListener, config: LinkConfig) -> Endpoint {
    let membership = Membership::new(nodes.to_vec(), local).unwrap();
    let (tx, arrivals) = crossbeam_channel::unbounded();
    let (links, thread) = Links::spawn(membership, local, listener, config, Box::new(tx)).unwrap();
    Endpoint {
        links,
        thread,
        arrivals,
    }
}

/// `n` endpoints named n0, n1, … that know each other.
fn cluster(n: usize, config: LinkConfig) -> (Vec<Node>, Vec<Endpoint>) {
    let listeners: Vec<TcpListener> = (0..n).map(|_| listener()).collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let ids: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let nodes = members(&ids, &addrs);
    let endpoints = listeners
        .into_iter()
        .zip(&ids)
        .map(|(l, id)| start(&nodes, id, l, config.clone()))
        .collect();
    (nodes, endpoints)
}

fn index(e: &Endpoint, id: &str) -> NodeIndex {
    e.links.membership().index_of(id).unwrap()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

fn all_linked(endpoints: &[Endpoint]) -> bool {
    endpoints.iter().all(|e| {
        e.links
            .membership()
            .nodes()
            .iter()
            .filter_map(|n| e.links.membership().index_of(&n.id))
            .filter(|&i| i != e.links.local())
            .all(|i| e.links.is_up(i))
    })
}

fn forward(lane: u64, seq: u32) -> Payload {
    Payload::Forward(Forward {
        lane,
        origin: Origin::default(),
        request_id: seq,
        user: 1,
        device: 1,
        frame: Bytes::from_static(b"request"),
        checked: Default::default(),
        handles: Default::default(),
    })
}

#[test]
fn two_and_three_endpoints_link_up_and_payloads_arrive() {
    for n in [2, 3] {
        let (_, endpoints) = cluster(n, LinkConfig::default());
        wait_until("every link up", Duration::from_secs(5), || {
            all_linked(&endpoints)
        });
        // Everyone sends one push to everyone else.
        for (i, e) in endpoints.iter().enumerate() {
            for j in (0..n).filter(|&j| j != i) {
                let to = index(e, &format!("n{j}"));
                let push = Payload::PushBatch(PushBatch {
                    users: vec![i as u64, j as u64],
                    except: None,
                    frame: Bytes::from_static(b"push"),
                    notify: Default::default(),
                });
                e.links.send(to, 7, push).unwrap();
            }
        }
        for (j, e) in endpoints.iter().enumerate() {
            let mut from: Vec<u64> = (0..n - 1)
                .map(|_| match e.arrivals.recv_timeout(Duration::from_secs(5)) {
                    Ok((sender, Payload::PushBatch(p))) => {
                        assert_eq!(p.users[1], j as u64);
                        assert_eq!(index(e, &format!("n{}", p.users[0])), sender);
                        p.users[0]
                    }
                    other => panic!("{other:?}"),
                })
                .collect();
            from.sort();
            let expected: Vec<u64> = (0..n as u64).filter(|&i| i != j as u64).collect();
            assert_eq!(from, expected, "n{j} got pushes from");
        }
        // Both directions are counted per peer: handshake, heartbeats and the push.
        let m = endpoints[0].links.metrics();
        for (peer, c) in &m.peers {
            let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
            assert!(
                load(&c.frames_out) >= 3 && load(&c.frames_in) >= 2,
                "{peer}"
            );
            assert!(load(&c.bytes_out) > 0 && load(&c.bytes_in) > 0, "{peer}");
            assert_eq!((load(&c.up), load(&c.links_up)), (1, 2), "{peer}");
        }
    }
}

#[test]
fn payloads_of_one_lane_arrive_in_the_order_they_were_sent() {
    let (_, endpoints) = cluster(2, LinkConfig::default());
    wait_until("linked", Duration::from_secs(5), || all_linked(&endpoints));
    let (a, b) = (&endpoints[0], &endpoints[1]);
    let to_b = index(a, "n1");
    const LANES: u64 = 16;
    const PER_LANE: u32 = 2_000;
    // Interleaved over lanes, as shards would send; a full queue is retried, as a shard
    // would answer its client and the client retry.
    for seq in 0..PER_LANE {
        for lane in 0..LANES {
            while let Err(e) = a.links.send(to_b, lane, forward(lane, seq)) {
                assert_eq!(e, LinkError::Full);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let mut next = vec![0u32; LANES as usize];
    for _ in 0..LANES * PER_LANE as u64 {
        match b.arrivals.recv_timeout(Duration::from_secs(10)) {
            Ok((_, Payload::Forward(f))) => {
                assert_eq!(f.request_id, next[f.lane as usize], "lane {}", f.lane);
                next[f.lane as usize] += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(next.iter().all(|&n| n == PER_LANE));
    // Both links of the pool carried some lanes.
    assert!((0..LANES).any(|l| lane_link(l, 2) == 0) && (0..LANES).any(|l| lane_link(l, 2) == 1));
}

#[test]
fn a_node_with_a_different_member_list_is_refused_on_both_sides() {
    let listeners = [listener(), listener()];
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let nodes = members(&["a", "b"], &addrs);
    let mut other = nodes.clone();
    other[0].client_addr = "10.9.9.9:7878".into();
    let [la, lb] = listeners;
    let a = start(&nodes, "a", la, LinkConfig::default());
    let b = start(&other, "b", lb, LinkConfig::default());
    let (ma, mb) = (a.links.metrics(), b.links.metrics());
    let membership = 2; // REFUSAL_REASONS index
    wait_until(
        "both sides count the refusal",
        Duration::from_secs(5),
        || {
            let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
            // a refused b's dial and b was refused by a; and the other way round.
            load(&ma.peers[0].1.refused_in[membership]) > 0
                && load(&mb.peers[0].1.refused_out[membership]) > 0
                && load(&mb.peers[0].1.refused_in[membership]) > 0
                && load(&ma.peers[0].1.refused_out[membership]) > 0
        },
    );
    assert!(!a.links.is_up(index(&a, "b")) && !b.links.is_up(index(&b, "a")));
    assert_eq!(
        a.links.send(index(&a, "b"), 1, forward(1, 1)),
        Err(LinkError::Down)
    );
}

#[test]
fn an_unknown_node_id_is_refused() {
    let listeners = [listener(), listener()];
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let [la, lb] = listeners;
    let a = start(
        &members(&["a", "b"], &addrs),
        "a",
        la,
        LinkConfig::default(),
    );
    let _x = start(
        &members(&["a", "x"], &addrs),
        "x",
        lb,
        LinkConfig::default(),
    );
    let m = a.links.metrics();
    wait_until("a refuses x", Duration::from_secs(5), || {
        m.refused_unknown[1].load(Ordering::Relaxed) > 0
    });
}

#[test]
fn a_stopped_endpoint_is_down_within_two_seconds_and_relinks_when_restarted() {
    let (nodes, mut endpoints) = cluster(3, LinkConfig::default());
    wait_until("linked", Duration::from_secs(5), || all_linked(&endpoints));
    let c = endpoints.pop().unwrap();
    let a = &endpoints[0];
    let to_c = index(a, "n2");
    c.thread.stop();
    // Every link of the pool to n2 down, not just one (is_up is false after the first).
    let m = a.links.metrics();
    let took = wait_until("n2 down at n0", Duration::from_secs(2), || {
        !a.links.is_up(to_c) && m.peers[1].1.links_up.load(Ordering::Relaxed) == 0
    });
    assert!(took < Duration::from_secs(2));
    // Every lane is refused at once, without waiting.
    for lane in 0..8 {
        let t = Instant::now();
        assert_eq!(
            a.links.send(to_c, lane, forward(lane, 0)),
            Err(LinkError::Down)
        );
        assert!(t.elapsed() < Duration::from_millis(50));
    }
    // n0 and n1 are still linked to each other.
    assert!(a.links.is_up(index(a, "n1")) && endpoints[1].links.is_up(index(&endpoints[1], "n0")));

    let c = start(
        &nodes,
        "n2",
        rebind(nodes[2].cluster_addr),
        LinkConfig::default(),
    );
    endpoints.push(c);
    wait_until(
        "relinked after the restart",
        Duration::from_secs(10),
        || all_linked(&endpoints),
    );
    let a = &endpoints[0];
    a.links.send(to_c, 3, forward(3, 42)).unwrap();
    match endpoints[2].arrivals.recv_timeout(Duration::from_secs(5)) {
        Ok((from, Payload::Forward(f))) => {
            assert_eq!((from, f.request_id), (index(&endpoints[2], "n0"), 42))
        }
        other => panic!("{other:?}"),
    }
    assert!(
        a.links.metrics().peers[1]
            .1
            .reconnects
            .load(Ordering::Relaxed)
            > 0
    );
}

/// A fake peer `b`: accepts one link from `a`, answers its PEER_HELLO with PEER_WELCOME, and
/// then does nothing at all (reads nothing, writes nothing) while the socket stays open.
fn fake_peer_that_goes_quiet(listener: &TcpListener, nodes: &[Node]) -> TcpStream {
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = BytesMut::new();
    let hello = loop {
        if let Some(f) = decode_peer(&mut buf).unwrap() {
            break f;
        }
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "a closed before saying hello");
        buf.extend_from_slice(&chunk[..n]);
    };
    let membership = Membership::new(nodes.to_vec(), "b").unwrap();
    match hello {
        PeerFrame::PeerHello(h) => {
            assert_eq!((h.node.as_str(), h.membership), ("a", membership.hash()))
        }
        other => panic!("{other:?}"),
    }
    let mut out = BytesMut::new();
    let welcome = PeerWelcome {
        version: PEER_VERSION,
        node: "b".into(),
        membership: membership.hash(),
    };
    encode_peer(&welcome.into(), &mut out);
    s.write_all(&out).unwrap();
    s
}

#[test]
fn a_peer_that_goes_silent_is_down_within_two_seconds() {
    let (la, lb) = (listener(), listener());
    let nodes = members(
        &["a", "b"],
        &[la.local_addr().unwrap(), lb.local_addr().unwrap()],
    );
    let config = LinkConfig {
        pool: 1,
        ..LinkConfig::default()
    };
    let a = start(&nodes, "a", la, config);
    let to_b = index(&a, "b");
    let _quiet = fake_peer_that_goes_quiet(&lb, &nodes);
    wait_until("up after the welcome", Duration::from_secs(2), || {
        a.links.is_up(to_b)
    });
    let silent_since = Instant::now();
    wait_until("down after silence", Duration::from_secs(3), || {
        !a.links.is_up(to_b)
    });
    let took = silent_since.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(2),
        "down after {took:?}"
    );
    assert_eq!(a.links.send(to_b, 0, forward(0, 0)), Err(LinkError::Down));
}

#[test]
fn a_peer_that_stops_reading_fills_the_queue_and_send_answers_full_without_blocking() {
    let (la, lb) = (listener(), listener());
    let nodes = members(
        &["a", "b"],
        &[la.local_addr().unwrap(), lb.local_addr().unwrap()],
    );
    // Long silence limit: the peer below never answers a ping, and this test is about the
    // queue bound, not the heartbeat.
    let config = LinkConfig {
        pool: 1,
        queue_bytes: MIN_QUEUE_BYTES,
        silence: Duration::from_secs(60),
        ..LinkConfig::default()
    };
    let a = start(&nodes, "a", la, config);
    let to_b = index(&a, "b");
    let _stuck = fake_peer_that_goes_quiet(&lb, &nodes);
    wait_until("up", Duration::from_secs(2), || a.links.is_up(to_b));
    let chunk = Bytes::from(vec![7u8; 60_000]);
    let mut sent = 0usize;
    let mut slowest = Duration::ZERO;
    let full_at = loop {
        let t = Instant::now();
        let r = a.links.send(
            to_b,
            1,
            Payload::PushBatch(PushBatch {
                users: vec![1],
                except: None,
                frame: chunk.clone(),
                notify: Default::default(),
            }),
        );
        slowest = slowest.max(t.elapsed());
        match r {
            Ok(()) => sent += chunk.len(),
            Err(LinkError::Full) => break sent,
            Err(LinkError::Down) => panic!("the link went down after {sent} bytes"),
        }
        // Socket buffers on loopback hold a few MiB at most; the bound must be hit long before.
        assert!(sent < 256 << 20, "never Full after {sent} bytes");
    };
    assert!(
        full_at >= MIN_QUEUE_BYTES as usize - chunk.len(),
        "full after {full_at} bytes"
    );
    assert!(
        slowest < Duration::from_millis(50),
        "a send took {slowest:?}"
    );
    // The bound holds: once the socket and the output buffer are full, nothing drains.
    std::thread::sleep(Duration::from_millis(200));
    let m = a.links.metrics();
    let queued = m.peers[0].1.queued_bytes.load(Ordering::Relaxed);
    assert!(queued <= MIN_QUEUE_BYTES, "{queued} bytes queued");
    assert!(m.peers[0].1.full.load(Ordering::Relaxed) >= 1);
}

#[test]
fn a_lane_always_uses_the_same_link_and_lanes_spread() {
    for pool in 1..=4 {
        let mut used = vec![0; pool];
        for lane in 0..1000u64 {
            let link = lane_link(lane, pool);
            assert_eq!(link, lane_link(lane, pool));
            used[link] += 1;
        }
        assert!(used.iter().all(|&n| n > 1000 / pool / 2), "{used:?}");
    }
}

#[test]
fn many_small_payloads_to_a_peer_that_stops_reading_are_bounded_by_queue_slots() {
    let (la, lb) = (listener(), listener());
    let nodes = members(
        &["a", "b"],
        &[la.local_addr().unwrap(), lb.local_addr().unwrap()],
    );
    let config = LinkConfig {
        pool: 1,
        silence: Duration::from_secs(60),
        ..LinkConfig::default()
    };
    let a = start(&nodes, "a", la, config.clone());
    let to_b = index(&a, "b");
    let _stuck = fake_peer_that_goes_quiet(&lb, &nodes);
    wait_until("up", Duration::from_secs(2), || a.links.is_up(to_b));
    let mut sent = 0u64;
    loop {
        match a.links.send(to_b, 1, forward(1, 0)) {
            Ok(()) => sent += 1,
            Err(LinkError::Full) => break,
            Err(LinkError::Down) => panic!("down after {sent} payloads"),
        }
        assert!(sent < 10_000_000, "never Full after {sent} payloads");
    }
    let queued = a.links.metrics().peers[0]
        .1
        .queued_bytes
        .load(Ordering::Relaxed);
    // Far below the byte bound: the slots ran out first.
    assert!(queued < config.queue_bytes / 8, "{queued} bytes queued");
    assert!(
        queued >= (LINK_QUEUE_SLOTS as u64 - 1) * 20,
        "{queued} bytes queued"
    );
}

/// Panics on the first payload it is handed.
struct PanickingInbound;

impl Inbound for PanickingInbound {
    fn deliver(&mut self, _from: NodeIndex, _payload: Payload) {
        panic!("injected: the inbound handler failed");
    }
}

#[test]
fn a_link_thread_that_panics_leaves_every_link_down_on_both_sides() {
    let listeners = [listener(), listener()];
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let nodes = members(&["a", "b"], &addrs);
    let [la, lb] = listeners;
    let a = start(&nodes, "a", la, LinkConfig::default());
    let membership = Membership::new(nodes.clone(), "b").unwrap();
    let (b_links, _b_thread) = Links::spawn(
        membership,
        "b",
        lb,
        LinkConfig::default(),
        Box::new(PanickingInbound),
    )
    .unwrap();
    let (to_b, to_a) = (index(&a, "b"), b_links.membership().index_of("a").unwrap());
    wait_until("linked", Duration::from_secs(5), || {
        a.links.is_up(to_b) && b_links.is_up(to_a)
    });
    a.links.send(to_b, 1, forward(1, 1)).unwrap();
    wait_until("b cut off after its panic", Duration::from_secs(2), || {
        !b_links.is_up(to_a)
    });
    assert_eq!(b_links.send(to_a, 1, forward(1, 2)), Err(LinkError::Down));
    assert_eq!(b_links.metrics().peers[0].1.up.load(Ordering::Relaxed), 0);
    wait_until("a sees b down", Duration::from_secs(2), || {
        !a.links.is_up(to_b)
    });
}

#[test]
fn inbound_links_past_the_cap_are_closed_at_once() {
    let (la, lb) = (listener(), listener());
    let nodes = members(
        &["a", "b"],
        &[la.local_addr().unwrap(), lb.local_addr().unwrap()],
    );
    let addr = nodes[0].cluster_addr;
    let _a = start(&nodes, "a", la, LinkConfig::default());
    // One peer, two links each way: the cap is 2 x 2 + 16 = 20 links in their handshake or up.
    let cap = 20;
    let conns: Vec<TcpStream> = (0..cap + 5)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // Well before the 1.5 s handshake limit closes the others.
    std::thread::sleep(Duration::from_millis(300));
    let closed = conns.iter().filter(|c| is_eof(c)).count();
    assert_eq!(closed, 5);
}

/// Whether the other end closed `c` (a read returns 0 at once).
fn is_eof(c: &TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    matches!((&*c).read(&mut [0u8; 16]), Ok(0))
}

/// Endpoints named by `ids`, encrypted (each with its own key, listed in the member list)
/// when `encrypted`.
fn named_cluster(ids: &[&str], encrypted: bool) -> (Vec<Node>, Vec<Endpoint>) {
    let listeners: Vec<TcpListener> = ids.iter().map(|_| listener()).collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let (nodes, configs) = if encrypted {
        keyed(members(ids, &addrs))
    } else {
        (members(ids, &addrs), vec![LinkConfig::default(); ids.len()])
    };
    let endpoints = listeners
        .into_iter()
        .zip(ids)
        .zip(configs)
        .map(|((l, id), config)| start(&nodes, id, l, config))
        .collect();
    (nodes, endpoints)
}

#[test]
fn encrypted_endpoints_link_up_and_payloads_of_a_lane_arrive_in_order() {
    let (_, endpoints) = named_cluster(&["n0", "n1", "n2"], true);
    wait_until("every encrypted link up", Duration::from_secs(5), || {
        all_linked(&endpoints)
    });
    let (a, c) = (&endpoints[0], &endpoints[2]);
    let to_c = index(a, "n2");
    // Enough to fill many records, and one payload larger than a record.
    for seq in 0..5_000 {
        while let Err(e) = a.links.send(to_c, 9, forward(9, seq)) {
            assert_eq!(e, LinkError::Full);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let big = Payload::PushBatch(PushBatch {
        users: (0..30_000).collect(),
        except: None,
        frame: Bytes::from(vec![7u8; 100_000]),
        notify: Default::default(),
    });
    a.links.send(to_c, 9, big.clone()).unwrap();
    for seq in 0..5_000 {
        match c.arrivals.recv_timeout(Duration::from_secs(10)) {
            Ok((_, Payload::Forward(f))) => assert_eq!(f.request_id, seq),
            other => panic!("{other:?}"),
        }
    }
    match c.arrivals.recv_timeout(Duration::from_secs(10)) {
        Ok((from, payload)) => assert_eq!((from, payload), (index(c, "n0"), big)),
        other => panic!("{other:?}"),
    }
}

/// The `REFUSAL_REASONS` index of `key`.
const KEY_REASON: usize = 4;

#[test]
fn a_node_that_does_not_hold_its_listed_key_is_refused_on_both_sides() {
    let listeners = [listener(), listener()];
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let (nodes, mut configs) = keyed(members(&["a", "b"], &addrs));
    // b runs with another key than the one every member list gives for it.
    configs[1].noise = Some(keypair(99));
    let [la, lb] = listeners;
    let a = start(&nodes, "a", la, configs[0].clone());
    let b = start(&nodes, "b", lb, configs[1].clone());
    let (ma, mb) = (a.links.metrics(), b.links.metrics());
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    wait_until(
        "both directions refused for the key, on both sides",
        Duration::from_secs(5),
        || {
            // a dials b with b's listed key pinned: b cannot read it and does not learn who
            // dialed (an unknown node); a sees the refusal.
            load(&ma.peers[0].1.refused_out[KEY_REASON]) > 0
                && load(&mb.refused_unknown[KEY_REASON]) > 0
                // b dials a: the handshake works, but b proved a key that is not b's entry.
                && load(&ma.peers[0].1.refused_in[KEY_REASON]) > 0
                && load(&mb.peers[0].1.refused_out[KEY_REASON]) > 0
        },
    );
    assert!(!a.links.is_up(index(&a, "b")) && !b.links.is_up(index(&b, "a")));
    // Nothing got past the handshake: no payload frame was taken.
    assert_eq!(
        a.links.send(index(&a, "b"), 1, forward(1, 1)),
        Err(LinkError::Down)
    );
    assert!(b.arrivals.try_recv().is_err() && a.arrivals.try_recv().is_err());
}

#[test]
fn an_encrypted_and_a_plaintext_node_refuse_each_other() {
    let listeners = [listener(), listener()];
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let (nodes, configs) = keyed(members(&["a", "b"], &addrs));
    let [la, lb] = listeners;
    let a = start(&nodes, "a", la, configs[0].clone());
    let b = start(&nodes, "b", lb, LinkConfig::default());
    let (ma, mb) = (a.links.metrics(), b.links.metrics());
    let protocol = 3; // REFUSAL_REASONS index
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    wait_until("refused both ways", Duration::from_secs(5), || {
        // a's handshake to b is answered with a plain PEER_REFUSE; b's plain hello to a is
        // answered the same way.
        load(&ma.peers[0].1.refused_out[protocol]) > 0
            && load(&mb.refused_unknown[protocol]) > 0
            && load(&ma.refused_unknown[protocol]) > 0
            && load(&mb.peers[0].1.refused_out[protocol]) > 0
    });
    assert!(!a.links.is_up(index(&a, "b")) && !b.links.is_up(index(&b, "a")));
}

/// A TCP relay from a fresh listener to `to` that keeps a copy of every byte both ways.
fn tap(to: SocketAddr) -> (TcpListener, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    let relay = listener();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (accepting, log) = (relay.try_clone().unwrap(), seen.clone());
    std::thread::spawn(move || {
        for client in accepting.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(to) else {
                return;
            };
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                        if into.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = into.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    (relay, seen)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn an_encrypted_link_carries_no_frame_in_the_clear() {
    for encrypted in [false, true] {
        // a reaches b's cluster address through the tap; b accepts on its own listener.
        let (la, lb) = (listener(), listener());
        let (relay, seen) = tap(lb.local_addr().unwrap());
        let addrs = [la.local_addr().unwrap(), relay.local_addr().unwrap()];
        let ids = ["node-alpha-7f3e", "node-bravo-91c4"];
        let plain = members(&ids, &addrs);
        let (nodes, configs) = if encrypted {
            keyed(plain)
        } else {
            (plain, vec![LinkConfig::default(); 2])
        };
        let a = start(&nodes, ids[0], la, configs[0].clone());
        let b = start(&nodes, ids[1], lb, configs[1].clone());
        let to_b = index(&a, ids[1]);
        wait_until("a linked to b", Duration::from_secs(5), || {
            a.links.is_up(to_b)
        });
        let marker = b"a secret message, unmistakable";
        let push = Payload::PushBatch(PushBatch {
            users: vec![1],
            except: None,
            frame: Bytes::from_static(marker),
            notify: Default::default(),
        });
        a.links.send(to_b, 1, push).unwrap();
        match b.arrivals.recv_timeout(Duration::from_secs(5)) {
            Ok((_, Payload::PushBatch(p))) => assert_eq!(&p.frame[..], marker),
            other => panic!("{other:?}"),
        }
        let seen = seen.lock().unwrap().clone();
        assert!(!seen.is_empty());
        for needle in [ids[0].as_bytes(), ids[1].as_bytes(), &marker[..]] {
            assert_eq!(
                contains(&seen, needle),
                !encrypted,
                "{} in the {} capture",
                String::from_utf8_lossy(needle),
                if encrypted { "encrypted" } else { "plain" }
            );
        }
    }
}

/// Payloads per second over one link pool, plain and encrypted, for BENCHMARKS.md:
/// `cargo test -p courier --lib link_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn link_throughput_plain_and_encrypted() {
    const PAYLOADS: u32 = 400_000;
    for round in 0..3 {
        for encrypted in [false, true] {
            let (_, endpoints) = named_cluster(&["a", "b"], encrypted);
            wait_until("linked", Duration::from_secs(5), || all_linked(&endpoints));
            let (a, b) = (&endpoints[0], &endpoints[1]);
            let to_b = index(a, "b");
            let frame = Bytes::from(vec![0x5a; 200]);
            let start = Instant::now();
            let receiver = std::thread::scope(|scope| {
                let receiver = scope.spawn(|| {
                    for _ in 0..PAYLOADS {
                        b.arrivals.recv_timeout(Duration::from_secs(10)).unwrap();
                    }
                    start.elapsed()
                });
                for seq in 0..PAYLOADS {
                    let lane = u64::from(seq % 64);
                    let payload = Payload::Forward(Forward {
                        lane,
                        origin: Origin::default(),
                        request_id: seq,
                        user: 1,
                        device: 1,
                        frame: frame.clone(),
                        checked: Default::default(),
                        handles: Default::default(),
                    });
                    while a.links.send(to_b, lane, payload.clone()).is_err() {
                        std::thread::yield_now();
                    }
                }
                receiver.join().unwrap()
            });
            println!(
                "round {round} {}: {PAYLOADS} payloads of 200 B in {receiver:?}: {:.0} payloads/s",
                if encrypted { "encrypted" } else { "plain" },
                f64::from(PAYLOADS) / receiver.as_secs_f64()
            );
        }
    }
}

/// What a recording [`Inbound`] saw: a payload's request id, or the end of a burst with the
/// number of payloads in it (ends of rounds that handed nothing on are not recorded).
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Delivered(u32),
    Burst(usize),
}

struct Recorder {
    seen: crossbeam_channel::Sender<Seen>,
    in_burst: usize,
}

impl Inbound for Recorder {
    fn deliver(&mut self, _from: NodeIndex, payload: Payload) {
        if let Payload::Forward(f) = payload {
            self.in_burst += 1;
            let _ = self.seen.send(Seen::Delivered(f.request_id));
        }
    }

    fn flush(&mut self) {
        if self.in_burst > 0 {
            let _ = self
                .seen
                .send(Seen::Burst(std::mem::take(&mut self.in_burst)));
        }
    }
}

/// A peer writes 100 payloads in one write (one loopback segment, one read): the link thread
/// hands them on in order and then ends the burst once, so the server's `Inbound` wakes each
/// shard once for all of them, not once per payload.
#[test]
fn the_payloads_of_one_read_are_handed_on_in_order_then_flushed_once() {
    let (la, lb) = (listener(), listener());
    let nodes = members(
        &["a", "b"],
        &[la.local_addr().unwrap(), lb.local_addr().unwrap()],
    );
    let b_addr = lb.local_addr().unwrap();
    let (tx, seen) = crossbeam_channel::unbounded();
    let membership = Membership::new(nodes.to_vec(), "b").unwrap();
    let recorder = Recorder {
        seen: tx,
        in_burst: 0,
    };
    let (_links, _thread) = Links::spawn(
        membership,
        "b",
        lb,
        LinkConfig::default(),
        Box::new(recorder),
    )
    .unwrap();
    // A fake `a` dials b, says hello, and waits for the welcome.
    let mut s = TcpStream::connect(b_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = BytesMut::new();
    let hello = PeerHello {
        version: PEER_VERSION,
        node: "a".into(),
        membership: Membership::new(nodes.to_vec(), "a").unwrap().hash(),
    };
    encode_peer(&hello.into(), &mut out);
    s.write_all(&out).unwrap();
    let mut buf = BytesMut::new();
    loop {
        if let Some(f) = decode_peer(&mut buf).unwrap() {
            assert!(matches!(f, PeerFrame::PeerWelcome(_)), "{f:?}");
            break;
        }
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "b closed before its welcome");
        buf.extend_from_slice(&chunk[..n]);
    }
    out.clear();
    for seq in 0..100 {
        let Payload::Forward(f) = forward(seq as u64 % 4, seq) else {
            unreachable!()
        };
        encode_peer(&f.into(), &mut out);
    }
    assert!(out.len() < 16 * 1024, "one segment: {}", out.len());
    s.write_all(&out).unwrap();
    let mut got = Vec::new();
    while got.last() != Some(&Seen::Burst(100)) {
        match seen.recv_timeout(Duration::from_secs(5)) {
            Ok(s) => got.push(s),
            Err(e) => panic!("{e}: saw {got:?}"),
        }
    }
    let expected: Vec<Seen> = (0..100)
        .map(Seen::Delivered)
        .chain([Seen::Burst(100)])
        .collect();
    assert_eq!(got, expected);
    drop(s);
}
