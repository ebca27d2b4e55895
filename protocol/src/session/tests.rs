//! The session driven by hand: bytes in (whole, one at a time, in random splits), a fake
//! clock, and what comes out.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::{
    ContactList, Contacts, Done, Envelope, ErrorReply, Login, MessagePush, Pong, Redirect,
    Register, Resume, Send, Sent, Typing,
};

const HEARTBEAT: Duration = Duration::from_secs(10);

fn config() -> SessionConfig {
    SessionConfig {
        client_name: "test/1".into(),
        ..SessionConfig::default()
    }
}

fn welcome(heartbeat_secs: u16) -> Welcome {
    Welcome {
        version: VERSION,
        max_frame: 65536,
        heartbeat_secs,
        node: "n1".into(),
    }
}

fn auth_ok() -> AuthOk {
    AuthOk {
        user: 7,
        device: 1,
        token: Bytes::from_static(&[9; 32]),
        handle: "alice".into(),
        watermark: 42,
    }
}

fn error(code: ErrorCode) -> Frame {
    ErrorReply {
        code: code as u16,
        message: "no".into(),
    }
    .into()
}

fn push(id: u64) -> Frame {
    MessagePush {
        message: crate::Message {
            thread: 1,
            id,
            ..crate::Message::default()
        },
        reply_to: 0,
    }
    .into()
}

/// The server's side of the wire: frames encoded back to back.
fn wire(frames: &[(u32, Frame)]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for (id, frame) in frames {
        encode(*id, frame, &mut buf);
    }
    buf.to_vec()
}

/// Everything the session wants written, decoded.
fn sent(s: &mut Session) -> Vec<Envelope> {
    let mut buf = BytesMut::new();
    let n = s.poll_transmit(&mut buf);
    assert_eq!(n, buf.len());
    let decoder = Decoder::new(MAX_FRAME_LEN);
    let mut out = Vec::new();
    while let Some(env) = decoder.decode(&mut buf).unwrap() {
        out.push(env);
    }
    assert!(buf.is_empty(), "whole frames only");
    out
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// A session that has said HELLO and got WELCOME at `t0`.
fn welcomed(t0: Instant, heartbeat_secs: u16) -> Session {
    let mut s = Session::new(config(), t0);
    let hello = sent(&mut s);
    s.handle_input(
        &wire(&[(hello[0].request_id, welcome(heartbeat_secs).into())]),
        t0,
    );
    assert_eq!(events(&mut s), [Event::Welcomed(welcome(heartbeat_secs))]);
    s
}

fn login() -> Frame {
    Login {
        handle: "alice".into(),
        password: "password1".into(),
        device: "laptop".into(),
    }
    .into()
}

fn closed(reason: CloseReason) -> Event {
    Event::Closed { reason }
}

#[test]
fn hello_is_the_first_frame_and_nothing_times_out_before_welcome() {
    let t0 = Instant::now();
    let mut s = Session::new(config(), t0);
    assert_eq!(s.state(), State::AwaitWelcome);
    assert_eq!(
        sent(&mut s),
        [Envelope::new(
            1,
            Hello {
                version: VERSION,
                client: "test/1".into()
            }
        )]
    );
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(t0 + Duration::from_secs(3600));
    assert!(sent(&mut s).is_empty() && events(&mut s).is_empty());
    assert_eq!(
        s.send_request(
            &Hello {
                version: 1,
                client: "again".into()
            }
            .into()
        ),
        Err(SessionError::HelloIsAutomatic)
    );
}

#[test]
fn welcome_fed_one_byte_at_a_time_completes_on_the_last_byte() {
    let t0 = Instant::now();
    let mut s = Session::new(config(), t0);
    sent(&mut s);
    let bytes = wire(&[(1, welcome(30).into())]);
    for (i, b) in bytes.iter().enumerate() {
        s.handle_input(std::slice::from_ref(b), t0);
        let got = events(&mut s);
        if i + 1 < bytes.len() {
            assert!(got.is_empty(), "event after {} bytes: {got:?}", i + 1);
            assert_eq!(s.state(), State::AwaitWelcome);
        } else {
            assert_eq!(got, [Event::Welcomed(welcome(30))]);
        }
    }
    assert_eq!(s.state(), State::Welcomed);
    assert_eq!(s.welcome(), Some(&welcome(30)));
    assert_eq!(s.max_send_frame(), 65536);
}

/// WELCOME, AUTH_OK, pushes and replies out of order, then the server's close, as one byte
/// stream; every way of cutting it gives the same events.
#[test]
fn any_split_of_the_input_gives_the_same_events() {
    let script = |s: &mut Session| -> (Vec<u8>, [u32; 3]) {
        sent(s);
        let auth = s.send_request(&login()).unwrap();
        let a = s.send_request(&ContactList {}.into()).unwrap();
        let b = s.send_request(&ContactList {}.into()).unwrap();
        let bytes = wire(&[
            (1, welcome(30).into()),
            (auth, auth_ok().into()),
            (0, push(1)),
            (b, Contacts { users: vec![] }.into()),
            (0, push(2)),
            (a, error(ErrorCode::RateLimited)),
            (0, error(ErrorCode::ShuttingDown)),
        ]);
        (bytes, [auth, a, b])
    };
    let t0 = Instant::now();
    let mut whole = Session::new(config(), t0);
    let (bytes, [auth, a, b]) = script(&mut whole);
    whole.handle_input(&bytes, t0);
    let expected = events(&mut whole);
    assert_eq!(
        expected,
        [
            Event::Welcomed(welcome(30)),
            Event::Authenticated {
                request_id: auth,
                auth: auth_ok()
            },
            Event::Push(push(1)),
            Event::Reply {
                request_id: b,
                frame: Contacts { users: vec![] }.into()
            },
            Event::Push(push(2)),
            Event::Reply {
                request_id: a,
                frame: error(ErrorCode::RateLimited)
            },
            closed(CloseReason::Server {
                code: ErrorCode::ShuttingDown as u16,
                message: "no".into()
            }),
        ]
    );

    let mut one_by_one = Session::new(config(), t0);
    script(&mut one_by_one);
    for b in &bytes {
        one_by_one.handle_input(std::slice::from_ref(b), t0);
    }
    assert_eq!(events(&mut one_by_one), expected);

    for seed in 0..200 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut s = Session::new(config(), t0);
        script(&mut s);
        let mut rest = &bytes[..];
        let mut got = Vec::new();
        while !rest.is_empty() {
            let n = rng.random_range(1..=rest.len().min(40));
            s.handle_input(&rest[..n], t0);
            rest = &rest[n..];
            got.extend(events(&mut s));
        }
        assert_eq!(got, expected, "seed {seed}");
    }
}

#[test]
fn register_login_and_resume_each_authenticate() {
    let t0 = Instant::now();
    let frames: [Frame; 3] = [
        Register {
            handle: "alice".into(),
            password: "password1".into(),
            device: "laptop".into(),
        }
        .into(),
        login(),
        Resume {
            token: Bytes::from_static(&[9; 32]),
        }
        .into(),
    ];
    for frame in frames {
        let mut s = welcomed(t0, 30);
        let id = s.send_request(&frame).unwrap();
        assert_eq!(sent(&mut s), [Envelope::new(id, frame.clone())]);
        s.handle_input(&wire(&[(id, auth_ok().into())]), t0);
        assert_eq!(
            events(&mut s),
            [Event::Authenticated {
                request_id: id,
                auth: auth_ok()
            }],
            "{}",
            frame.name()
        );
        assert_eq!(s.state(), State::Authenticated);
        assert_eq!(s.outstanding(), 0);
    }
}

#[test]
fn a_refused_login_is_a_reply_and_the_session_stays_open_for_another_try() {
    let t0 = Instant::now();
    let mut s = welcomed(t0, 30);
    let first = s.send_request(&login()).unwrap();
    s.handle_input(&wire(&[(first, error(ErrorCode::BadCredentials))]), t0);
    assert_eq!(
        events(&mut s),
        [Event::Reply {
            request_id: first,
            frame: error(ErrorCode::BadCredentials)
        }]
    );
    assert_eq!(s.state(), State::Welcomed);
    let second = s.send_request(&login()).unwrap();
    assert_ne!(second, first);
    s.handle_input(&wire(&[(second, auth_ok().into())]), t0);
    assert!(matches!(
        events(&mut s)[..],
        [Event::Authenticated { request_id, .. }] if request_id == second
    ));
    // A second attempt on a logged-in connection is the server's to refuse.
    let third = s.send_request(&login()).unwrap();
    s.handle_input(
        &wire(&[(third, error(ErrorCode::AlreadyAuthenticated))]),
        t0,
    );
    assert_eq!(s.state(), State::Authenticated);
    assert_eq!(events(&mut s).len(), 1);
}

#[test]
fn a_redirect_instead_of_auth_ok_names_the_node_then_closes() {
    let t0 = Instant::now();
    let mut s = welcomed(t0, 30);
    let id = s.send_request(&login()).unwrap();
    s.handle_input(
        &wire(&[(
            0,
            Redirect {
                node: "n2".into(),
                addr: "10.0.0.2:7878".into(),
                key: Bytes::from_static(&[0x4b; 32]),
            }
            .into(),
        )]),
        t0,
    );
    assert_eq!(
        events(&mut s),
        [
            Event::Redirect {
                node: "n2".into(),
                addr: "10.0.0.2:7878".into(),
                key: Some(crate::noise::PublicKey::from_bytes([0x4b; 32])),
            },
            closed(CloseReason::Redirected)
        ]
    );
    assert_eq!(s.outstanding(), 0, "the login gets no answer of its own");
    // What the server still sends is not read; nothing can be sent.
    s.handle_input(&wire(&[(id, auth_ok().into())]), t0);
    assert!(events(&mut s).is_empty());
    assert_eq!(
        s.send_request(&login()),
        Err(SessionError::Closed),
        "a closed session sends nothing"
    );
}

#[test]
fn a_handshake_refusal_and_a_wrong_version_close_with_their_reason() {
    let t0 = Instant::now();
    let mut s = Session::new(config(), t0);
    sent(&mut s);
    s.handle_input(&wire(&[(1, error(ErrorCode::UnsupportedVersion))]), t0);
    let reason = CloseReason::HandshakeRefused {
        code: ErrorCode::UnsupportedVersion as u16,
        message: "no".into(),
    };
    assert_eq!(reason.code(), Some(ErrorCode::UnsupportedVersion));
    assert_eq!(events(&mut s), [closed(reason)]);

    let mut s = Session::new(config(), t0);
    sent(&mut s);
    let mut w = welcome(30);
    w.version = 2;
    s.handle_input(&wire(&[(1, w.into())]), t0);
    assert_eq!(
        events(&mut s),
        [closed(CloseReason::VersionMismatch { server: 2 })]
    );
    assert_eq!(s.state(), State::Closed);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn error_reply_with_request_id_0_is_the_close_reason_known_code_or_not() {
    let t0 = Instant::now();
    for code in [
        ErrorCode::SessionRevoked as u16,
        ErrorCode::SlowConsumer as u16,
        999,
    ] {
        let mut s = welcomed(t0, 30);
        let waiting = s.send_request(&ContactList {}.into()).unwrap();
        s.handle_input(
            &wire(&[(
                0,
                ErrorReply {
                    code,
                    message: "bye".into(),
                }
                .into(),
            )]),
            t0,
        );
        let reason = CloseReason::Server {
            code,
            message: "bye".into(),
        };
        assert_eq!(reason.code(), ErrorCode::from_u16(code));
        assert_eq!(events(&mut s), [closed(reason)]);
        // The outstanding request is dropped: no reply event, and none later.
        s.handle_input(&wire(&[(waiting, Contacts { users: vec![] }.into())]), t0);
        s.handle_transport_closed();
        s.close();
        assert!(events(&mut s).is_empty(), "Closed comes once");
    }
}

#[test]
fn bytes_that_do_not_decode_and_frames_a_server_must_not_send_close_the_session() {
    let t0 = Instant::now();
    let mut s = welcomed(t0, 30);
    s.handle_input(&[0, 0, 0, 5, 0x7e, 0, 0, 0, 1], t0);
    assert_eq!(
        events(&mut s),
        [closed(CloseReason::Malformed(
            crate::Error::UnknownFrameType(0x7e)
        ))]
    );

    let mut s = welcomed(t0, 30);
    s.handle_input(&[0x7f, 0, 0, 0], t0);
    assert!(matches!(
        events(&mut s)[..],
        [Event::Closed {
            reason: CloseReason::Malformed(crate::Error::FrameTooLarge { .. })
        }]
    ));

    // A request from the server, a response with id 0 that is not ERROR_REPLY, and a WELCOME
    // that answers something other than HELLO. Pushes before them were delivered.
    let cases = [
        (false, Frame::from(ContactList {}), "ContactList"),
        (false, Done {}.into(), "Done"),
        (true, welcome(30).into(), "Welcome"),
    ];
    for (to_request, frame, name) in cases {
        let mut s = welcomed(t0, 30);
        let id = s.send_request(&ContactList {}.into()).unwrap();
        let rid = if to_request { id } else { 0 };
        s.handle_input(&wire(&[(0, push(1)), (rid, frame), (0, push(2))]), t0);
        assert_eq!(
            events(&mut s),
            [
                Event::Push(push(1)),
                closed(CloseReason::UnexpectedFrame {
                    name,
                    request_id: rid
                })
            ]
        );
    }
}

#[test]
fn replies_out_of_order_reach_their_requests_and_strays_are_dropped() {
    let t0 = Instant::now();
    let mut s = welcomed(t0, 30);
    let ids: Vec<u32> = (0..3)
        .map(|i| {
            s.send_request(
                &Send {
                    thread: 1,
                    client_msg_id: i,
                    ..Send::default()
                }
                .into(),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(ids, [2, 3, 4], "HELLO had 1");
    let typing = s
        .send_request(
            &Typing {
                thread: 1,
                active: true,
            }
            .into(),
        )
        .unwrap();
    assert_eq!(
        s.outstanding(),
        3,
        "TYPING is never answered and holds no id"
    );
    let sent_frame = |i: u64| Sent {
        thread: 1,
        message: 100 + i,
        client_msg_id: i,
    };
    s.handle_input(
        &wire(&[
            (ids[2], sent_frame(2).into()),
            (typing, Done {}.into()),
            (77, Done {}.into()),
            (ids[0], sent_frame(0).into()),
            (ids[0], sent_frame(9).into()),
            (ids[1], sent_frame(1).into()),
        ]),
        t0,
    );
    let expect = |i: usize| Event::Reply {
        request_id: ids[i],
        frame: sent_frame(i as u64).into(),
    };
    assert_eq!(events(&mut s), [expect(2), expect(0), expect(1)]);
    assert_eq!(s.outstanding(), 0);
}

#[test]
fn a_cancelled_request_keeps_its_id_until_its_late_reply_which_is_dropped() {
    let t0 = Instant::now();
    let mut s = welcomed(t0, 30);
    let gave_up = s.send_request(&ContactList {}.into()).unwrap();
    assert!(s.cancel(gave_up));
    assert!(!s.cancel(gave_up), "already cancelled");
    assert!(!s.cancel(12345), "never sent");
    // Wrap the counter onto the cancelled id: it is skipped while the reply may still come.
    s.next_id = gave_up;
    let next = s.send_request(&ContactList {}.into()).unwrap();
    assert_eq!(next, gave_up + 1);
    s.handle_input(&wire(&[(gave_up, Contacts { users: vec![] }.into())]), t0);
    assert!(events(&mut s).is_empty(), "the late reply is dropped");
    s.next_id = gave_up;
    assert_eq!(s.send_request(&ContactList {}.into()).unwrap(), gave_up);
}

#[test]
fn request_ids_wrap_past_u32_max_to_1_and_skip_outstanding_ids() {
    let t0 = Instant::now();
    let mut s = welcomed(t0, 30);
    let low = s.send_request(&ContactList {}.into()).unwrap();
    assert_eq!(low, 2);
    s.next_id = u32::MAX - 1;
    let ids: Vec<u32> = (0..4)
        .map(|_| s.send_request(&ContactList {}.into()).unwrap())
        .collect();
    // 0 is never used; 2 is still outstanding.
    assert_eq!(ids, [u32::MAX - 1, u32::MAX, 1, 3]);
    let on_wire: Vec<u32> = sent(&mut s).iter().map(|e| e.request_id).collect();
    assert_eq!(on_wire, [2, u32::MAX - 1, u32::MAX, 1, 3]);
    s.handle_input(&wire(&[(u32::MAX, Done {}.into())]), t0);
    assert_eq!(
        events(&mut s),
        [Event::Reply {
            request_id: u32::MAX,
            frame: Done {}.into()
        }]
    );
}

#[test]
fn outstanding_requests_are_bounded_and_a_reply_frees_a_place() {
    let t0 = Instant::now();
    let mut s = Session::new(
        SessionConfig {
            max_outstanding: 3,
            ..config()
        },
        t0,
    );
    sent(&mut s);
    s.handle_input(&wire(&[(1, welcome(1).into())]), t0);
    let a = s.send_request(&ContactList {}.into()).unwrap();
    s.send_request(&ContactList {}.into()).unwrap();
    let c = s.send_request(&ContactList {}.into()).unwrap();
    assert!(s.cancel(c), "a cancelled request still counts");
    assert_eq!(
        s.send_request(&ContactList {}.into()),
        Err(SessionError::TooManyOutstanding { limit: 3 })
    );
    // TYPING holds no id; the heartbeat's own PING is not refused.
    let typing = Typing {
        thread: 1,
        active: false,
    };
    assert!(s.send_request(&typing.into()).is_ok());
    s.handle_timeout(t0 + Duration::from_secs(1));
    assert_eq!(sent(&mut s).last().unwrap().frame, Ping { nonce: 1 }.into());
    assert_eq!(s.outstanding(), 4);
    let refused = s.send_request(&ContactList {}.into()).unwrap_err();
    assert!(
        refused.to_string().contains("wait for replies"),
        "{refused}"
    );

    s.handle_input(&wire(&[(a, Done {}.into())]), t0);
    assert_eq!(s.outstanding(), 3);
    assert_eq!(
        s.send_request(&ContactList {}.into()),
        Err(SessionError::TooManyOutstanding { limit: 3 }),
        "the PING's place is taken until its PONG"
    );
    s.handle_input(&wire(&[(c, Done {}.into())]), t0);
    assert!(s.send_request(&ContactList {}.into()).is_ok());
}

#[test]
fn heartbeat_pings_on_schedule_and_pong_is_consumed() {
    let t0 = Instant::now();
    let mut s = welcomed(t0, 10);
    assert_eq!(s.poll_timeout(), Some(t0 + HEARTBEAT));
    s.handle_timeout(t0 + HEARTBEAT - Duration::from_millis(1));
    assert!(sent(&mut s).is_empty(), "not due yet");

    // Other traffic does not move the schedule: the server's timer wants PING regardless.
    s.send_request(&ContactList {}.into()).unwrap();
    sent(&mut s);
    s.handle_timeout(t0 + HEARTBEAT);
    let ping = sent(&mut s);
    assert_eq!(ping.len(), 1);
    assert_eq!(ping[0].frame, Ping { nonce: 1 }.into());
    assert_eq!(s.poll_timeout(), Some(t0 + 2 * HEARTBEAT));

    let t1 = t0 + HEARTBEAT + Duration::from_millis(5);
    s.handle_input(&wire(&[(ping[0].request_id, Pong { nonce: 1 }.into())]), t1);
    assert!(events(&mut s).is_empty(), "PONG is the session's own");
    s.handle_timeout(t0 + 2 * HEARTBEAT);
    assert_eq!(sent(&mut s)[0].frame, Ping { nonce: 2 }.into());
}

#[test]
fn three_heartbeats_of_silence_close_the_session_and_any_input_defers_it() {
    let t0 = Instant::now();
    let mut s = welcomed(t0, 10);
    for i in 1..=2 {
        let now = t0 + HEARTBEAT * i;
        assert_eq!(s.poll_timeout(), Some(now));
        s.handle_timeout(now);
        assert_eq!(sent(&mut s).len(), 1);
    }
    // A push at 25 s: the server is alive; dead only 30 s after it.
    let t25 = t0 + Duration::from_secs(25);
    s.handle_input(&wire(&[(0, push(1))]), t25);
    events(&mut s);
    s.handle_timeout(t0 + 3 * HEARTBEAT);
    assert_eq!(sent(&mut s).len(), 1, "third ping");
    assert!(events(&mut s).is_empty());
    let dead = t25 + 3 * HEARTBEAT;
    let mut now = t0 + 3 * HEARTBEAT;
    while let Some(deadline) = s.poll_timeout() {
        assert!(deadline > now, "time moves on");
        now = deadline;
        s.handle_timeout(now);
        sent(&mut s);
    }
    assert_eq!(now, dead);
    assert_eq!(
        events(&mut s),
        [closed(CloseReason::TimedOut {
            silent_for: 3 * HEARTBEAT
        })]
    );
    assert!(s.is_closed());
}

#[test]
fn no_heartbeat_when_the_server_announces_0() {
    let t0 = Instant::now();
    let mut s = welcomed(t0, 0);
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(t0 + Duration::from_secs(86400));
    assert!(sent(&mut s).is_empty() && events(&mut s).is_empty());
}

#[test]
fn the_caller_errors_say_what_is_wrong() {
    let t0 = Instant::now();
    let mut s = welcomed(t0, 30);
    assert_eq!(
        s.send_request(&Done {}.into()),
        Err(SessionError::NotARequest { name: "Done" })
    );
    assert_eq!(
        s.send_request(&push(1)),
        Err(SessionError::NotARequest {
            name: "MessagePush"
        })
    );
    let big = Send {
        thread: 1,
        body: vec![0u8; 70_000].into(),
        ..Send::default()
    };
    let err = s.send_request(&big.into()).unwrap_err();
    assert!(
        matches!(err, SessionError::FrameTooLarge { name: "Send", max: 65536, len } if len > 70_000),
        "{err:?}"
    );
    assert!(sent(&mut s).is_empty(), "nothing refused is queued");
    s.close();
    assert_eq!(events(&mut s), [closed(CloseReason::Local)]);
    assert_eq!(
        s.send_request(&ContactList {}.into()),
        Err(SessionError::Closed)
    );
}

#[test]
fn the_transport_closing_ends_the_session_once_and_drops_what_was_unsent() {
    let t0 = Instant::now();
    let mut s = Session::new(config(), t0);
    s.handle_transport_closed();
    s.handle_transport_closed();
    assert_eq!(events(&mut s), [closed(CloseReason::TransportClosed)]);
    assert!(
        sent(&mut s).is_empty(),
        "HELLO is not written to a closed transport"
    );
}

#[test]
fn poll_transmit_appends_to_what_the_caller_holds() {
    let t0 = Instant::now();
    let mut s = Session::new(config(), t0);
    let mut buf = BytesMut::from(&b"xy"[..]);
    let n = s.poll_transmit(&mut buf);
    assert_eq!(buf.len(), 2 + n);
    assert_eq!(&buf[..2], b"xy");
    assert_eq!(s.poll_transmit(&mut buf), 0, "taken once");
    let mut empty = BytesMut::new();
    s.send_request(&ContactList {}.into()).unwrap();
    assert_eq!(s.poll_transmit(&mut empty), 9);
}

#[test]
fn shrink_idle_frees_buffers_but_keeps_a_partial_frame() {
    let t0 = Instant::now();
    let mut s = welcomed(t0, 30);
    let bytes = wire(&[(0, push(1)), (0, push(2))]);
    let cut = bytes.len() - 3;
    s.handle_input(&bytes[..cut], t0);
    s.shrink_idle();
    assert!(s.inbuf.capacity() > 0, "a partial frame stays");
    s.handle_input(&bytes[cut..], t0);
    assert_eq!(events(&mut s), [Event::Push(push(1)), Event::Push(push(2))]);
    s.send_request(&ContactList {}.into()).unwrap();
    s.shrink_idle();
    assert_eq!(s.inbuf.capacity(), 0);
    assert!(s.outbox.capacity() > 0, "unsent bytes stay");
    sent(&mut s);
    s.shrink_idle();
    assert_eq!((s.inbuf.capacity(), s.outbox.capacity()), (0, 0));
}

#[test]
fn shrink_idle_frees_the_event_queue_and_request_table_once_drained() {
    let t0 = Instant::now();
    let mut s = welcomed(t0, 30);
    let id = s.send_request(&ContactList {}.into()).unwrap();
    sent(&mut s);
    s.handle_input(&wire(&[(0, push(1))]), t0);
    s.shrink_idle();
    assert!(s.events.capacity() > 0, "an event not yet taken stays");
    assert!(
        s.outstanding.capacity() > 0,
        "a request awaiting its reply stays"
    );
    assert_eq!(events(&mut s), [Event::Push(push(1))]);
    s.handle_input(
        &wire(&[(id, Frame::Contacts(Contacts { users: vec![] }))]),
        t0,
    );
    let _ = events(&mut s);
    s.shrink_idle();
    assert_eq!((s.events.capacity(), s.outstanding.capacity()), (0, 0));
}

#[test]
fn take_undecoded_hands_over_a_partial_frame_and_closes() {
    let t0 = Instant::now();
    let mut s = welcomed(t0, 0);
    let bytes = wire(&[(0, push(5)), (0, push(6))]);
    let second = bytes.len() / 2;
    // The first push whole, the second cut three bytes short.
    s.handle_input(&bytes[..bytes.len() - 3], t0);
    assert_eq!(events(&mut s), [Event::Push(push(5))]);
    let mut rest = s.take_undecoded();
    assert_eq!(rest.len(), bytes.len() - 3 - second);
    assert_eq!(events(&mut s), [closed(CloseReason::Local)]);
    rest.extend_from_slice(&bytes[bytes.len() - 3..]);
    let env = Decoder::new(MAX_FRAME_LEN).decode(&mut rest).unwrap();
    assert_eq!(env.map(|e| e.frame), Some(push(6)));
}

/// A Noise server for the encrypted sessions below: the responder, then its transport.
struct NoiseServer {
    handshake: Option<crate::noise::Handshake>,
    transport: Option<crate::noise::Transport>,
    input: BytesMut,
    plaintext: BytesMut,
}

impl NoiseServer {
    fn new(key: &Keypair) -> NoiseServer {
        NoiseServer {
            handshake: Some(crate::noise::Handshake::responder(key)),
            transport: None,
            input: BytesMut::new(),
            plaintext: BytesMut::new(),
        }
    }

    /// Takes the client's bytes; returns what the server answers (handshake messages).
    fn take(&mut self, bytes: &[u8]) -> Result<Vec<u8>, crate::noise::Error> {
        self.input.extend_from_slice(bytes);
        let mut out = BytesMut::new();
        if let Some(h) = self.handshake.as_mut() {
            if let Some(done) = h.handle(&mut self.input, &mut out)? {
                self.transport = Some(done.transport);
                self.handshake = None;
            }
        }
        if let Some(t) = self.transport.as_mut() {
            t.open_all(&mut self.input, MAX_RECORD_LEN, &mut self.plaintext)?;
        }
        Ok(out.to_vec())
    }

    /// The frames the client sent, decoded.
    fn frames(&mut self) -> Vec<Envelope> {
        let decoder = Decoder::new(MAX_FRAME_LEN);
        std::iter::from_fn(|| decoder.decode(&mut self.plaintext).unwrap()).collect()
    }

    /// `frames` sealed as one record.
    fn seal(&mut self, frames: &[(u32, Frame)]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let t = self.transport.as_mut().expect("handshake done");
        t.seal(&wire(frames), &mut out).unwrap();
        out.to_vec()
    }
}

fn server_keypair() -> Keypair {
    Keypair::from_private([0x53; 32])
}

fn encrypted(encryption: Encryption) -> SessionConfig {
    SessionConfig {
        encryption,
        ..config()
    }
}

fn take_all(s: &mut Session) -> Vec<u8> {
    let mut buf = BytesMut::new();
    s.poll_transmit(&mut buf);
    buf.to_vec()
}

/// Runs the handshake of `s` against `server` to the end; returns the bytes the client sent
/// after its last handshake message.
fn shake(s: &mut Session, server: &mut NoiseServer, t0: Instant) {
    for _ in 0..4 {
        let to_server = take_all(s);
        let reply = server.take(&to_server).unwrap();
        if !reply.is_empty() {
            s.handle_input(&reply, t0);
        }
        if s.is_secured() && server.transport.is_some() && to_server.is_empty() {
            return;
        }
    }
}

#[test]
fn pinned_session_runs_ik_and_its_frames_travel_sealed() {
    let t0 = Instant::now();
    let key = server_keypair();
    let mut s = Session::new(encrypted(Encryption::Pinned(key.public())), t0);
    let first = take_all(&mut s);
    assert_eq!(&first[..3], &[0x00, 0x61, 0x02], "IK message 1, not HELLO");
    assert_eq!(first.len(), 99, "HELLO waits for the handshake");
    let mut server = NoiseServer::new(&key);
    let reply = server.take(&first).unwrap();
    assert!(server.transport.is_some(), "IK is done for the server");
    assert_eq!(s.server_key(), None);
    s.handle_input(&reply, t0);
    assert!(s.is_secured());
    assert_eq!(s.server_key(), Some(key.public()));
    assert_eq!(s.pattern(), Some(Pattern::Ik));
    let sealed = take_all(&mut s);
    assert!(
        !sealed.windows(6).any(|w| w == b"test/1"),
        "HELLO's text is not on the wire"
    );
    server.take(&sealed).unwrap();
    let hello = server.frames();
    assert!(matches!(
        hello[..],
        [Envelope {
            request_id: 1,
            frame: Frame::Hello(_)
        }]
    ));
    // The server's answer split byte by byte still comes out whole.
    let answer = server.seal(&[(1, welcome(10).into()), (0, push(5))]);
    for b in &answer {
        s.handle_input(&[*b], t0);
    }
    assert_eq!(
        events(&mut s),
        [Event::Welcomed(welcome(10)), Event::Push(push(5))]
    );
    // Requests go out sealed, several frames in one record.
    s.send_request(&login()).unwrap();
    s.send_request(&Ping { nonce: 3 }.into()).unwrap();
    let sealed = take_all(&mut s);
    assert_eq!(
        u16::from_be_bytes([sealed[0], sealed[1]]) as usize,
        sealed.len() - 2,
        "one record"
    );
    server.take(&sealed).unwrap();
    assert_eq!(server.frames().len(), 2);
}

#[test]
fn trust_on_first_use_runs_xx_and_reports_the_key_it_learned() {
    let t0 = Instant::now();
    let key = server_keypair();
    let mut s = Session::new(encrypted(Encryption::TrustOnFirstUse), t0);
    let mut server = NoiseServer::new(&key);
    let first = take_all(&mut s);
    assert_eq!(&first[..3], &[0x00, 0x21, 0x01], "XX message 1");
    let reply = server.take(&first).unwrap();
    s.handle_input(&reply, t0);
    assert_eq!(s.server_key(), Some(key.public()));
    assert_eq!(s.pattern(), Some(Pattern::Xx));
    // Message 3 and the sealed HELLO leave together.
    server.take(&take_all(&mut s)).unwrap();
    assert!(server.transport.is_some());
    assert!(matches!(
        server.frames()[..],
        [Envelope {
            frame: Frame::Hello(_),
            ..
        }]
    ));
}

#[test]
fn a_server_with_another_key_is_refused_with_both_keys_named() {
    let t0 = Instant::now();
    let pinned = server_keypair().public();
    let impostor = Keypair::from_private([0x77; 32]);
    let mut s = Session::new(encrypted(Encryption::Pinned(pinned)), t0);
    let first = take_all(&mut s);
    let mut reject = BytesMut::new();
    let mut h = crate::noise::Handshake::responder(&impostor);
    let mut input = BytesMut::from(&first[..]);
    assert!(h.handle(&mut input, &mut reject).is_err());
    assert_eq!(&reject[..], [0, 1, 1], "the REJECT");
    s.handle_input(&reject, t0);
    let reason = CloseReason::ServerKeyMismatch {
        pinned,
        presented: None,
    };
    assert_eq!(events(&mut s), [closed(reason.clone())]);
    let text = reason.to_string();
    assert!(
        text.contains(&pinned.to_string()) && text.contains("do not connect"),
        "{text}"
    );
}

#[test]
fn a_tampered_record_closes_the_session_and_delivers_nothing() {
    let t0 = Instant::now();
    let key = server_keypair();
    let mut s = Session::new(encrypted(Encryption::Pinned(key.public())), t0);
    let mut server = NoiseServer::new(&key);
    shake(&mut s, &mut server, t0);
    let mut answer = server.seal(&[(1, welcome(10).into())]);
    let last = answer.len() - 1;
    answer[last] ^= 1;
    s.handle_input(&answer, t0);
    match &events(&mut s)[..] {
        [Event::Closed {
            reason: CloseReason::Encryption(text),
        }] => assert!(text.contains("failed authentication"), "{text}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_replayed_record_closes_the_session() {
    let t0 = Instant::now();
    let key = server_keypair();
    let mut s = Session::new(encrypted(Encryption::TrustOnFirstUse), t0);
    let mut server = NoiseServer::new(&key);
    shake(&mut s, &mut server, t0);
    let record = server.seal(&[(1, welcome(10).into())]);
    s.handle_input(&record, t0);
    assert_eq!(events(&mut s), [Event::Welcomed(welcome(10))]);
    s.handle_input(&record, t0);
    assert!(matches!(
        &events(&mut s)[..],
        [Event::Closed {
            reason: CloseReason::Encryption(_)
        }]
    ));
}

#[test]
fn a_plaintext_answer_to_the_handshake_is_reported_as_such() {
    let t0 = Instant::now();
    let mut s = Session::new(encrypted(Encryption::TrustOnFirstUse), t0);
    take_all(&mut s);
    let answer = wire(&[(0, error(ErrorCode::FrameTooLarge))]);
    // Split: the first bytes alone must not be taken for a broken handshake message.
    s.handle_input(&answer[..3], t0);
    assert!(events(&mut s).is_empty());
    s.handle_input(&answer[3..], t0);
    assert_eq!(
        events(&mut s),
        [closed(CloseReason::PlaintextAnswer {
            code: ErrorCode::FrameTooLarge as u16,
            message: "no".into()
        })]
    );
}

#[test]
fn take_transport_hands_the_record_layer_to_a_raw_driver() {
    let t0 = Instant::now();
    let key = server_keypair();
    let mut s = Session::new(encrypted(Encryption::Pinned(key.public())), t0);
    assert!(s.take_transport().is_none(), "not while handshaking");
    let mut server = NoiseServer::new(&key);
    let first = take_all(&mut s);
    s.handle_input(&server.take(&first).unwrap(), t0);
    let record = server.seal(&[(1, welcome(10).into())]);
    s.handle_input(&record[..5], t0);
    let (mut transport, unopened) = s.take_transport().expect("established");
    assert_eq!(&unopened[..], &record[..5]);
    let mut out = BytesMut::new();
    transport
        .seal(&wire(&[(9, Ping { nonce: 1 }.into())]), &mut out)
        .unwrap();
    server.take(&out).unwrap();
    let frames = server.frames();
    assert_eq!(frames.last().map(|e| e.request_id), Some(9));
}
