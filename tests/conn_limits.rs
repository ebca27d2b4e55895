//! Connection-level limits over real TCP (issue 12, "Accounts and resources"): connections per
//! client address, frames before authentication, and a partial frame's buffer.

mod util;

use std::time::{Duration, Instant};

use courier_protocol::*;
use util::{has_error, Server, TestConn};

const SHORT: Duration = Duration::from_secs(5);

/// Waits (bounded) until the server counts `n` open connections: closes are handled in the
/// server's own time, so a test that needs a place back waits for the count, not a sleep.
fn wait_for_connections(server: &Server, n: f64) {
    let deadline = Instant::now() + SHORT;
    loop {
        let now = Server::metric_sum(&server.metrics(), "courier_connections");
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server counts {now} connections, not {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_address_holds_at_most_max_conns_per_addr() {
    let server = Server::start_with(&["--max-conns-per-addr", "3", "--metrics", "127.0.0.1:0"]);
    let mut held: Vec<TestConn> = (0..3)
        .map(|_| {
            let mut c = server.connect();
            c.hello();
            c
        })
        .collect();
    let mut refused = server.connect();
    let frames = refused.expect_closed(SHORT);
    assert!(has_error(&frames, ErrorCode::ServerFull), "{frames:?}");
    let Some(Frame::ErrorReply(e)) = frames.first() else {
        unreachable!()
    };
    assert!(e.message.contains("--max-conns-per-addr"), "{}", e.message);
    assert_eq!(
        Server::metric_sum(
            &server.metrics(),
            "courier_disconnects_total{reason=\"too_many_from_address\"}"
        ),
        1.0
    );
    // Another address has its own count.
    let mut other = TestConn::connect_from(
        server.addr,
        "127.0.0.2".parse().unwrap(),
        server.encryption(),
    );
    other.hello();
    // A close gives the place back.
    drop(held.pop());
    wait_for_connections(&server, 3.0);
    let mut again = server.connect();
    again.hello();
    for c in held.iter_mut().chain([&mut other, &mut again]) {
        c.ping();
    }
}

/// Before authentication a frame may be at most 4 KiB, whatever `--max-frame` allows: refused
/// from its length, with a message that says why.
#[test]
fn frames_before_authentication_are_small() {
    let server = Server::start_with(&["--max-frame", "1048576"]);
    let mut c = server.connect();
    c.hello();
    // A REGISTER of 5,000 bytes: under --max-frame, over the pre-auth limit. Before, the
    // server read it whole and answered WEAK_PASSWORD, keeping the connection.
    c.send(
        7,
        Register {
            handle: "big".into(),
            password: "p".repeat(4_950),
            device: "d".into(),
        },
    );
    let frames = c.expect_closed(SHORT);
    assert!(has_error(&frames, ErrorCode::FrameTooLarge), "{frames:?}");
    let Some(Frame::ErrorReply(e)) = frames.first() else {
        unreachable!()
    };
    assert!(e.message.contains("before authentication"), "{}", e.message);
    // Only a length prefix, announcing 1 MiB: refused at once, not waited for.
    let mut prefix_only = server.connect();
    prefix_only.hello();
    prefix_only.send_raw(&1_000_000u32.to_be_bytes());
    assert!(has_error(
        &prefix_only.expect_closed(SHORT),
        ErrorCode::FrameTooLarge
    ));
    // Authenticated, the same size is an ordinary frame.
    let (mut authed, _) = server.user("someone");
    match authed.request(GetUsers {
        users: (1..=600).collect(),
    }) {
        Frame::Users(_) => {}
        other => panic!("{other:?}"),
    }
}
