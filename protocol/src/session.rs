//! The client side of a connection as a sans-IO state machine: handshake, authentication,
//! request ids, reply matching, heartbeat, close.
//!
//! A [`Session`] never touches a socket and never reads a clock. Its driver (the blocking
//! client's reader and heartbeat threads, an event loop, a test) feeds it what arrived and the
//! time, and acts on what it asks for:
//!
//! | driver -> session                        | session -> driver                       |
//! |-----------------------------------------|----------------------------------------|
//! | [`handle_input`](Session::handle_input)(bytes, now) | [`poll_transmit`](Session::poll_transmit)(buf): bytes to write |
//! | [`handle_timeout`](Session::handle_timeout)(now)    | [`poll_timeout`](Session::poll_timeout): when to call it next  |
//! | [`handle_transport_closed`](Session::handle_transport_closed) | [`poll_event`](Session::poll_event): replies, pushes, state changes |
//! | [`send_request`](Session::send_request)(frame) -> request id | |
//! | [`cancel`](Session::cancel)(request id), [`close`](Session::close) | |
//!
//! ```text
//!   Session::new(config, now): HELLO queued
//!         |
//!         v
//!  +--------------+  WELCOME, version 1   +-------------+   AUTH_OK    +---------------+
//!  | AwaitWelcome | --------------------> |  Welcomed   | -----------> | Authenticated |
//!  +--------------+  Event::Welcomed;     +-------------+  Event::     +---------------+
//!         |          heartbeat starts        |   ^        Authenticated          |
//!         |                                  +---+                               |
//!         |                     ERROR_REPLY to REGISTER / LOGIN / RESUME:        |
//!         |                     Event::Reply; the connection stays open          |
//!         |                                  |                                   |
//!         | ERROR_REPLY to HELLO,            |                                   |
//!         | WELCOME of another version       |                                   |
//!         v                                  v                                   v
//!  +--------------------------------------------------------------------------------+
//!  | Closed: Event::Closed { reason }, once, last. From any state on:               |
//!  |   ERROR_REPLY with request id 0 (the server's reason)      CloseReason::Server |
//!  |   REDIRECT (after Event::Redirect)                     CloseReason::Redirected |
//!  |   bytes that do not decode                              CloseReason::Malformed |
//!  |   a frame a server must not send                  CloseReason::UnexpectedFrame |
//!  |   three heartbeat intervals with nothing received        CloseReason::TimedOut |
//!  |   handle_transport_closed()                       CloseReason::TransportClosed |
//!  |   close()                                                   CloseReason::Local |
//!  | Outstanding requests get no reply; send_request returns SessionError::Closed.  |
//!  +--------------------------------------------------------------------------------+
//! ```
//!
//! Request ids count up from 1, wrap past `u32::MAX` to 1 and skip ids still outstanding
//! (PROTOCOL.md section 4). Every request but `TYPING` is outstanding until its one response
//! arrives, even after [`cancel`](Session::cancel): a cancelled request keeps its id, so a late
//! reply can never be taken for the answer to a newer request. At most
//! [`SessionConfig::max_outstanding`] requests are outstanding; the session's own `PING`s are
//! never refused at the bound (a server that answers requests answers them too).
//!
//! Heartbeat (PROTOCOL.md 5.3): after `WELCOME`, the session sends `PING` every
//! `heartbeat_secs` on schedule, whatever else is sent, and closes with
//! [`CloseReason::TimedOut`] when nothing at all has arrived for three intervals.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::{
    encode, AuthOk, Decoder, ErrorCode, Frame, Hello, Ping, Welcome, DEFAULT_MAX_FRAME_LEN,
    HEADER_BYTES, MAX_FRAME_LEN, VERSION,
};

/// The default bound on outstanding requests.
pub const DEFAULT_MAX_OUTSTANDING: usize = 1024;

/// Intervals of silence after which the server counts as dead.
const DEAD_AFTER_HEARTBEATS: u32 = 3;

/// How a session introduces itself and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Sent in `HELLO` so server logs can tell clients apart, e.g. `"courier-cli/0.1.0"`.
    pub client_name: String,
    /// The largest frame accepted from the server; clamped to [`MAX_FRAME_LEN`].
    pub max_frame_len: u32,
    /// Requests that may wait for replies at once; more is [`SessionError::TooManyOutstanding`].
    pub max_outstanding: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            client_name: concat!("courier-protocol/", env!("CARGO_PKG_VERSION")).to_string(),
            max_frame_len: MAX_FRAME_LEN,
            max_outstanding: DEFAULT_MAX_OUTSTANDING,
        }
    }
}

/// Where the session is in its life; see the diagram in the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `HELLO` is queued or sent; no `WELCOME` yet.
    AwaitWelcome,
    /// `WELCOME` arrived; not logged in (or every attempt so far was refused).
    Welcomed,
    /// An `AUTH_OK` arrived.
    Authenticated,
    /// Over; nothing more comes out but what is already queued.
    Closed,
}

/// What the session tells its driver, in the order things happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake is done; requests may follow. Heartbeats start now.
    Welcomed(Welcome),
    /// `AUTH_OK` answered the `REGISTER`, `LOGIN` or `RESUME` sent as `request_id`.
    Authenticated { request_id: u32, auth: AuthOk },
    /// The one response to the request sent as `request_id`; `ERROR_REPLY` included (for an
    /// authentication request, a refusal; the connection stays open).
    Reply { request_id: u32, frame: Frame },
    /// A push (`MESSAGE_PUSH`, `RECEIPT_PUSH`, `PRESENCE_PUSH`, `TYPING_PUSH`), in arrival order.
    Push(Frame),
    /// The user lives on another node: connect to `addr`, say `HELLO` and authenticate there
    /// (with `RESUME` if a token is at hand). [`Event::Closed`] with
    /// [`CloseReason::Redirected`] follows.
    Redirect { node: String, addr: String },
    /// The session is over; the last event. Close the transport.
    Closed { reason: CloseReason },
}

/// Why a session closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// The server announced the close with `ERROR_REPLY` and request id 0. `code` may be one
    /// this crate does not know; [`CloseReason::code`] is then `None`.
    #[error("the server closed the connection: code {code}: {message}")]
    Server { code: u16, message: String },
    /// The server refused `HELLO` with `ERROR_REPLY`.
    #[error("the server refused the handshake: code {code}: {message}")]
    HandshakeRefused { code: u16, message: String },
    /// `WELCOME` named a protocol version this crate does not speak.
    #[error("the server speaks protocol version {server}, this client speaks {VERSION}")]
    VersionMismatch { server: u16 },
    /// After a `REDIRECT`: reconnect to the address in [`Event::Redirect`].
    #[error("the server redirected this user to another node")]
    Redirected,
    /// Nothing arrived for three heartbeat intervals.
    #[error("the server sent nothing for {silent_for:?}; it is presumed dead")]
    TimedOut { silent_for: Duration },
    /// The server's bytes did not decode into frames.
    #[error("the server's bytes did not decode: {0}")]
    Malformed(crate::Error),
    /// The server sent a frame it must not send: a request, or a response with request id 0
    /// that is not `ERROR_REPLY`, or a `WELCOME` that answers no `HELLO`.
    #[error(
        "the server sent {name} with request id {request_id}, which the protocol does not allow"
    )]
    UnexpectedFrame { name: &'static str, request_id: u32 },
    /// The driver reported that the transport closed.
    #[error("the connection was closed")]
    TransportClosed,
    /// [`Session::close`] was called.
    #[error("closed by this side")]
    Local,
}

impl CloseReason {
    /// The server's error code, when it gave one this crate knows.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CloseReason::Server { code, .. } | CloseReason::HandshakeRefused { code, .. } => {
                ErrorCode::from_u16(*code)
            }
            _ => None,
        }
    }
}

/// What a caller can get wrong when sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the session is closed; open a new connection with a new session")]
    Closed,
    #[error(
        "{limit} requests are already waiting for replies; \
         wait for replies before sending more, or raise max_outstanding"
    )]
    TooManyOutstanding { limit: usize },
    #[error("{name} is not a request (client frames have codes 0x01 to 0x7f)")]
    NotARequest { name: &'static str },
    #[error("the session sends HELLO itself when it is created; send only what follows it")]
    HelloIsAutomatic,
    #[error(
        "{name} is {len} bytes, over the server's frame limit of {max}; \
         split it (media goes in chunks) or shorten it"
    )]
    FrameTooLarge {
        name: &'static str,
        len: usize,
        max: u32,
    },
}

/// What an outstanding request id is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Hello,
    /// `REGISTER`, `LOGIN` or `RESUME`.
    Auth,
    /// The session's own heartbeat; its `PONG` is consumed.
    Ping,
    /// A caller's request; its reply becomes [`Event::Reply`].
    Request,
    /// A caller gave up on it; the reply is dropped when it comes.
    Cancelled,
}

/// Heartbeat bookkeeping, from `WELCOME` on.
#[derive(Debug, Clone, Copy)]
struct Heartbeat {
    every: Duration,
    next_ping: Instant,
}

/// One client connection's protocol state. See the module docs.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    decoder: Decoder,
    state: State,
    welcome: Option<Welcome>,
    /// Received bytes not yet decoded.
    inbuf: BytesMut,
    /// Encoded frames not yet taken by [`Session::poll_transmit`].
    outbox: BytesMut,
    events: VecDeque<Event>,
    outstanding: HashMap<u32, Pending>,
    /// The next request id to try; never 0.
    next_id: u32,
    heartbeat: Option<Heartbeat>,
    /// When bytes last arrived (or the session started).
    last_input: Instant,
    ping_nonce: u64,
}

impl Session {
    /// A session on a transport that just connected; `HELLO` is queued for
    /// [`poll_transmit`](Self::poll_transmit).
    pub fn new(config: SessionConfig, now: Instant) -> Session {
        let mut session = Session {
            decoder: Decoder::new(config.max_frame_len),
            config,
            state: State::AwaitWelcome,
            welcome: None,
            inbuf: BytesMut::new(),
            outbox: BytesMut::new(),
            events: VecDeque::new(),
            outstanding: HashMap::new(),
            next_id: 1,
            heartbeat: None,
            last_input: now,
            ping_nonce: 0,
        };
        let hello = Frame::Hello(Hello {
            version: VERSION,
            client: session.config.client_name.clone(),
        });
        session.queue(&hello, Pending::Hello);
        session
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The server's `WELCOME`, once it arrived.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    /// The largest frame the server accepts: `WELCOME.max_frame`, or the protocol's default
    /// before `WELCOME` (or if the server announced 0).
    pub fn max_send_frame(&self) -> u32 {
        match &self.welcome {
            Some(w) if w.max_frame > 0 => w.max_frame.min(MAX_FRAME_LEN),
            _ => DEFAULT_MAX_FRAME_LEN,
        }
    }

    /// Requests waiting for a reply, cancelled ones and the session's own `PING`s included.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Encodes a request for [`poll_transmit`](Self::poll_transmit) and returns its request id.
    /// Its response comes out as [`Event::Reply`] (or [`Event::Authenticated`] for an
    /// `AUTH_OK`). `TYPING` gets no response and holds no id.
    pub fn send_request(&mut self, frame: &Frame) -> Result<u32, SessionError> {
        if self.state == State::Closed {
            return Err(SessionError::Closed);
        }
        if frame.code() >= 0x80 {
            return Err(SessionError::NotARequest { name: frame.name() });
        }
        let pending = match frame {
            Frame::Hello(_) => return Err(SessionError::HelloIsAutomatic),
            Frame::Register(_) | Frame::Login(_) | Frame::Resume(_) => Some(Pending::Auth),
            Frame::Typing(_) => None,
            _ => Some(Pending::Request),
        };
        let len = HEADER_BYTES + frame.body_size();
        let max = self.max_send_frame();
        if len > max as usize {
            return Err(SessionError::FrameTooLarge {
                name: frame.name(),
                len,
                max,
            });
        }
        match pending {
            Some(pending) => {
                let limit = self.config.max_outstanding;
                if self.outstanding.len() >= limit {
                    return Err(SessionError::TooManyOutstanding { limit });
                }
                Ok(self.queue(frame, pending))
            }
            None => {
                let id = self.allocate_id();
                encode(id, frame, &mut self.outbox);
                Ok(id)
            }
        }
    }

    /// The caller stopped waiting for `request_id`. The id stays taken until the reply comes,
    /// which is then dropped. False if the id was not an outstanding request of the caller's.
    pub fn cancel(&mut self, request_id: u32) -> bool {
        match self.outstanding.get_mut(&request_id) {
            Some(p @ (Pending::Request | Pending::Auth)) => {
                *p = Pending::Cancelled;
                true
            }
            _ => false,
        }
    }

    /// Moves every encoded frame not yet taken into `buf` (appending) and returns how many
    /// bytes that was. Write them all, in order.
    pub fn poll_transmit(&mut self, buf: &mut BytesMut) -> usize {
        let n = self.outbox.len();
        if buf.is_empty() {
            // No copy: the buffers trade places, capacity and all.
            std::mem::swap(buf, &mut self.outbox);
        } else {
            buf.extend_from_slice(&self.outbox);
            self.outbox.clear();
        }
        n
    }

    /// Frees what an idle session does not need: the input buffer when it holds no partial
    /// frame, the outbox when it is empty, and the event queue and the table of outstanding
    /// requests when they are empty (the handshake's events alone leave the queue with room
    /// for four 104-byte events), so that an idle session costs only its struct. For drivers
    /// that hold many idle sessions; the next input or request allocates again.
    pub fn shrink_idle(&mut self) {
        if self.inbuf.is_empty() {
            self.inbuf = BytesMut::new();
        }
        if self.outbox.is_empty() {
            self.outbox = BytesMut::new();
        }
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        if self.outstanding.is_empty() {
            self.outstanding = HashMap::new();
        }
    }

    /// Hands over the received bytes not yet decoded (a partial frame, at most) and closes with
    /// [`CloseReason::Local`]. For a driver that stops using the session and reads the rest of
    /// the connection itself: the test harness does so when a test sends hand-made frames,
    /// whose replies the session would not match.
    pub fn take_undecoded(&mut self) -> BytesMut {
        let undecoded = std::mem::take(&mut self.inbuf);
        self.close();
        undecoded
    }

    /// The next thing to act on, in order; `None` when there is nothing now.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next: the next `PING` or
    /// the moment the server counts as dead. `None` before `WELCOME`, without a heartbeat
    /// (`heartbeat_secs` 0) and once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let hb = self.heartbeat?;
        Some(hb.next_ping.min(self.dead_at(hb)))
    }

    /// Sends `PING` when it is due; closes with [`CloseReason::TimedOut`] when nothing arrived
    /// for three heartbeat intervals. Calling it early does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let Some(hb) = self.heartbeat else { return };
        if now >= self.dead_at(hb) {
            let silent_for = now.saturating_duration_since(self.last_input);
            self.close_with(CloseReason::TimedOut { silent_for });
            return;
        }
        if now >= hb.next_ping {
            self.ping_nonce += 1;
            let ping = Frame::Ping(Ping {
                nonce: self.ping_nonce,
            });
            self.queue(&ping, Pending::Ping);
            self.heartbeat = Some(Heartbeat {
                every: hb.every,
                next_ping: now + hb.every,
            });
        }
    }

    /// Bytes that arrived from the server, in order, split anywhere.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if self.state == State::Closed || bytes.is_empty() {
            return;
        }
        self.last_input = now;
        self.inbuf.extend_from_slice(bytes);
        while self.state != State::Closed {
            match self.decoder.decode(&mut self.inbuf) {
                Ok(Some(env)) => self.on_frame(env.request_id, env.frame, now),
                Ok(None) => break,
                Err(e) => self.close_with(CloseReason::Malformed(e)),
            }
        }
    }

    /// The transport closed (EOF or an error); closes with [`CloseReason::TransportClosed`]
    /// unless the session closed already.
    pub fn handle_transport_closed(&mut self) {
        self.close_with(CloseReason::TransportClosed);
    }

    /// Closes on purpose ([`CloseReason::Local`]); frames not yet taken are dropped.
    pub fn close(&mut self) {
        self.close_with(CloseReason::Local);
    }

    fn on_frame(&mut self, request_id: u32, frame: Frame, now: Instant) {
        let code = frame.code();
        if code >= 0xC0 {
            match frame {
                Frame::Redirect(r) => {
                    self.events.push_back(Event::Redirect {
                        node: r.node,
                        addr: r.addr,
                    });
                    self.close_with(CloseReason::Redirected);
                }
                push => self.events.push_back(Event::Push(push)),
            }
            return;
        }
        if code < 0x80 {
            return self.unexpected(&frame, request_id);
        }
        if request_id == 0 {
            match frame {
                Frame::ErrorReply(e) => self.close_with(CloseReason::Server {
                    code: e.code,
                    message: e.message,
                }),
                other => self.unexpected(&other, 0),
            }
            return;
        }
        // A response to an id that is not outstanding (nothing was asked with it, or it was a
        // `TYPING`) answers nothing the caller waits for: dropped.
        let Some(pending) = self.outstanding.remove(&request_id) else {
            return;
        };
        match (pending, frame) {
            (Pending::Hello, Frame::Welcome(w)) => self.on_welcome(w, now),
            (Pending::Hello, Frame::ErrorReply(e)) => {
                self.close_with(CloseReason::HandshakeRefused {
                    code: e.code,
                    message: e.message,
                })
            }
            (Pending::Hello, other) => self.unexpected(&other, request_id),
            (_, other @ Frame::Welcome(_)) => self.unexpected(&other, request_id),
            (Pending::Auth, Frame::AuthOk(auth)) => {
                self.state = State::Authenticated;
                self.events
                    .push_back(Event::Authenticated { request_id, auth });
            }
            (Pending::Auth | Pending::Request, frame) => {
                self.events.push_back(Event::Reply { request_id, frame })
            }
            (Pending::Ping | Pending::Cancelled, _) => {}
        }
    }

    fn on_welcome(&mut self, welcome: Welcome, now: Instant) {
        if welcome.version != VERSION {
            return self.close_with(CloseReason::VersionMismatch {
                server: welcome.version,
            });
        }
        let every = Duration::from_secs(welcome.heartbeat_secs.into());
        self.heartbeat = (!every.is_zero()).then(|| Heartbeat {
            every,
            next_ping: now + every,
        });
        self.state = State::Welcomed;
        self.welcome = Some(welcome.clone());
        self.events.push_back(Event::Welcomed(welcome));
    }

    fn unexpected(&mut self, frame: &Frame, request_id: u32) {
        self.close_with(CloseReason::UnexpectedFrame {
            name: frame.name(),
            request_id,
        });
    }

    fn close_with(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.outstanding = HashMap::new();
        self.inbuf = BytesMut::new();
        self.outbox = BytesMut::new();
        self.heartbeat = None;
        self.events.push_back(Event::Closed { reason });
    }

    fn dead_at(&self, hb: Heartbeat) -> Instant {
        self.last_input + hb.every * DEAD_AFTER_HEARTBEATS
    }

    /// Encodes a frame that waits for a response under a fresh id.
    fn queue(&mut self, frame: &Frame, pending: Pending) -> u32 {
        let id = self.allocate_id();
        self.outstanding.insert(id, pending);
        encode(id, frame, &mut self.outbox);
        id
    }

    /// The next id from 1 up, wrapping past `u32::MAX` to 1, that is not outstanding. Ends:
    /// fewer than `u32::MAX` ids are ever outstanding (the bound, plus three pings).
    fn allocate_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = id.checked_add(1).unwrap_or(1);
            if !self.outstanding.contains_key(&id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests;
