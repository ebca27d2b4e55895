//! One blocking TCP connection driven by the protocol's [`Session`], for the loadgen's side
//! tools: registering users ([`crate::users`]) and the probe scenario ([`crate::probe`]). The
//! workers' connections drive the same `Session` from a mio loop (`worker/conn.rs`).
//!
//! The session does the protocol (handshake, request ids, reply matching, heartbeat); this
//! writes what `poll_transmit` gives and feeds what the socket gives. Requests may be
//! pipelined: [`SessionConn::send`] several, then [`SessionConn::answer`] each; answers that
//! come in while waiting for another are kept until asked for (at most one per outstanding
//! request, which the session bounds).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use courier_protocol::session::{Encryption, Event};
use courier_protocol::{AuthOk, ErrorCode, Frame, Session, SessionConfig};

use crate::{Error, Result};

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// A blocking connection after `WELCOME`.
pub(crate) struct SessionConn {
    sock: TcpStream,
    session: Session,
    /// What the session gave to write.
    out: BytesMut,
    chunk: Vec<u8>,
    /// Answers that came in while waiting for another request's, by request id.
    early: HashMap<u32, Frame>,
    /// How long one answer may take.
    timeout: Duration,
}

impl SessionConn {
    /// Connects (over `encryption`: the pinned key, or plaintext), says `HELLO` as
    /// `client_name` and waits for `WELCOME`; every answer may take up to `timeout`.
    pub(crate) fn connect(
        server: SocketAddr,
        encryption: Encryption,
        client_name: &str,
        timeout: Duration,
    ) -> Result<SessionConn> {
        let sock = TcpStream::connect_timeout(&server, CONNECT_TIMEOUT)?;
        let _ = sock.set_nodelay(true);
        let config = SessionConfig {
            client_name: client_name.into(),
            encryption,
            ..SessionConfig::default()
        };
        let mut conn = SessionConn {
            sock,
            session: Session::new(config, Instant::now()),
            out: BytesMut::new(),
            chunk: vec![0; READ_CHUNK],
            early: HashMap::new(),
            timeout,
        };
        conn.flush()?;
        let deadline = Instant::now() + timeout;
        while conn.session.welcome().is_none() {
            conn.read_some(deadline, "Hello")?;
        }
        Ok(conn)
    }

    /// Sends `REGISTER`, `LOGIN` or `RESUME` and returns its `AUTH_OK`.
    pub(crate) fn authenticate(&mut self, frame: Frame) -> Result<AuthOk> {
        let request = frame.name();
        match self.call(frame)? {
            Frame::AuthOk(auth) => Ok(auth),
            other => Err(unexpected(request, other)),
        }
    }

    /// Sends a request and waits for its answer (`ERROR_REPLY` included: it is a frame here).
    pub(crate) fn call(&mut self, frame: Frame) -> Result<Frame> {
        let id = self.send(&frame)?;
        self.answer(id, frame.name())
    }

    /// Sends a request without waiting; returns its request id for [`answer`](Self::answer).
    pub(crate) fn send(&mut self, frame: &Frame) -> Result<u32> {
        let id = self.session.send_request(frame)?;
        self.flush()?;
        Ok(id)
    }

    /// Waits for the answer to request `id` (named `request` in errors); pushes are skipped.
    pub(crate) fn answer(&mut self, id: u32, request: &'static str) -> Result<Frame> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(frame) = self.early.remove(&id) {
                return Ok(frame);
            }
            self.read_some(deadline, request)?;
        }
    }

    /// Sends every frame with at most `window` unanswered; returns the answers in order.
    pub(crate) fn pipeline(&mut self, frames: Vec<Frame>, window: usize) -> Result<Vec<Frame>> {
        let mut waiting = std::collections::VecDeque::new();
        let mut out = Vec::with_capacity(frames.len());
        for frame in frames {
            if waiting.len() >= window.max(1) {
                let (id, name) = waiting.pop_front().expect("the window is full");
                out.push(self.answer(id, name)?);
            }
            waiting.push_back((self.send(&frame)?, frame.name()));
        }
        for (id, name) in waiting {
            out.push(self.answer(id, name)?);
        }
        Ok(out)
    }

    /// Writes what the session has queued.
    fn flush(&mut self) -> Result<()> {
        self.out.clear();
        self.session.poll_transmit(&mut self.out);
        if !self.out.is_empty() {
            self.sock.write_all(&self.out)?;
        }
        Ok(())
    }

    /// Reads once (or lets a heartbeat deadline pass) and takes the session's events; fails
    /// once the session closed or `deadline` passed.
    fn read_some(&mut self, deadline: Instant, request: &'static str) -> Result<()> {
        loop {
            let now = Instant::now();
            self.session.handle_timeout(now);
            self.flush()?;
            self.take_events()?;
            if now >= deadline {
                return Err(Error::NoAnswer {
                    request,
                    after: self.timeout,
                });
            }
            let wake = self
                .session
                .poll_timeout()
                .map_or(deadline, |t| t.min(deadline));
            let wait = wake.saturating_duration_since(now);
            // A zero timeout is refused by the socket; the deadline is due anyway.
            self.sock
                .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
            match self.sock.read(&mut self.chunk) {
                Ok(0) => self.session.handle_transport_closed(),
                Ok(n) => self.session.handle_input(&self.chunk[..n], Instant::now()),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            }
            return self.take_events();
        }
    }

    /// Keeps the answers, skips pushes; the close is an error.
    fn take_events(&mut self) -> Result<()> {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Authenticated { request_id, auth } => {
                    self.early.insert(request_id, Frame::AuthOk(auth));
                }
                Event::Reply { request_id, frame } => {
                    self.early.insert(request_id, frame);
                }
                Event::Closed { reason } => return Err(Error::Closed(reason)),
                // The close follows a redirect; pushes are not what these tools wait for.
                Event::Welcomed(_) | Event::Push(_) | Event::Redirect { .. } => {}
            }
        }
        Ok(())
    }
}

/// The error for an answer that is not the one expected: the server's refusal, or a frame
/// that does not fit.
pub(crate) fn unexpected(request: &'static str, answer: Frame) -> Error {
    match answer {
        Frame::ErrorReply(e) => Error::Refused {
            request,
            code: ErrorCode::from_u16(e.code).map_or_else(|| e.code.to_string(), |c| c.to_string()),
            message: e.message,
        },
        other => Error::UnexpectedAnswer {
            request,
            answer: other.name(),
        },
    }
}

#[cfg(test)]
mod tests {
    use courier_fake::FakeServer;
    use courier_protocol::{ContactList, LookupUser, Register};

    use super::*;

    fn registered(server: &FakeServer, timeout: Duration) -> SessionConn {
        let mut conn =
            SessionConn::connect(server.addr, Encryption::Plaintext, "test", timeout).unwrap();
        let register = Register {
            handle: "alice".into(),
            password: "password1".into(),
            device: "d".into(),
        };
        conn.authenticate(register.into()).unwrap();
        conn
    }

    #[test]
    fn pipelined_answers_come_back_in_request_order() {
        let server = FakeServer::start();
        let mut conn = registered(&server, Duration::from_secs(5));
        let lookups = ["alice", "nobody", "alice"]
            .map(|handle| {
                LookupUser {
                    handle: handle.into(),
                }
                .into()
            })
            .to_vec();
        let answers = conn.pipeline(lookups, 2).unwrap();
        assert!(matches!(answers[0], Frame::User(_)), "{answers:?}");
        assert!(matches!(answers[1], Frame::ErrorReply(_)), "{answers:?}");
        assert!(matches!(answers[2], Frame::User(_)), "{answers:?}");
        let refused = unexpected("LookupUser", answers[1].clone());
        assert!(
            refused.to_string().contains("UnknownUser (45)"),
            "{refused}"
        );
    }

    #[test]
    fn a_long_wait_keeps_the_heartbeat_and_ends_in_no_answer() {
        let server = FakeServer::with_heartbeat(1);
        let mut conn = registered(&server, Duration::from_millis(2500));
        server.behave(|b| b.ignore_contact_list = true);
        let err = conn.call(ContactList {}.into()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NoAnswer {
                    request: "ContactList",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            server.pings() >= 2,
            "pings while waiting: {}",
            server.pings()
        );
    }
}
