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
//!  |   encrypted: the server holds another key      CloseReason::ServerKeyMismatch |
//!  |   encrypted: a plaintext ERROR_REPLY instead of the handshake  PlaintextAnswer |
//!  |   encrypted: any other noise error (a record that fails)  CloseReason::Encryption |
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
//!
//! # Encryption
//!
//! [`SessionConfig::encryption`] puts the Noise layer of [`crate::noise`] underneath the frames
//! (NOISE.md): the bytes of `handle_input` and `poll_transmit` are then handshake
//! messages and records, and the frames above are unchanged. The handshake's first message is
//! queued by [`Session::new`]; `HELLO` and every request wait, encoded, until the handshake is
//! over, and each `poll_transmit` seals what is queued as one record. The server's key, pinned
//! or learned, is [`Session::server_key`] once the handshake is done. No driver needs code of
//! its own for this: it passes a config.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::noise::{self, Handshake, Keypair, Pattern, PublicKey, Transport, MAX_RECORD_LEN};
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
    /// Whether and how the bytes on the wire are encrypted. The default is
    /// [`Encryption::Plaintext`], which a server refuses unless it runs with
    /// `--insecure-plaintext`: a client must choose a pinned key or trust on first use.
    pub encryption: Encryption,
}

/// How a session protects its bytes (NOISE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encryption {
    /// Noise IK with the server's key pinned: one round trip. A server holding another key is
    /// refused with [`CloseReason::ServerKeyMismatch`]; never retry it unpinned.
    Pinned(PublicKey),
    /// Noise XX, trusting whatever key the server proves it holds: an explicit choice for a
    /// first contact. The key is [`Session::server_key`] afterwards; pin it from then on.
    TrustOnFirstUse,
    /// No encryption: only against a server run with `--insecure-plaintext` (local
    /// benchmarks, tests that write raw bytes).
    #[default]
    Plaintext,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            client_name: concat!("courier-protocol/", env!("CARGO_PKG_VERSION")).to_string(),
            max_frame_len: MAX_FRAME_LEN,
            max_outstanding: DEFAULT_MAX_OUTSTANDING,
            encryption: Encryption::Plaintext,
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
    /// [`CloseReason::Redirected`] follows. `key`: the node's static key, to pin on that
    /// connection (the node that sent it is authenticated, so it vouches for the key); `None`
    /// on a plaintext cluster, or when the frame's key is not 32 bytes.
    Redirect {
        node: String,
        addr: String,
        key: Option<crate::noise::PublicKey>,
    },
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
    /// The server does not hold the pinned key: it proved another one (XX), or it could not
    /// decrypt a handshake made for the pinned one (IK, `presented` is `None`).
    #[error("{}", noise::Error::ServerKeyMismatch { pinned: *pinned, presented: *presented })]
    ServerKeyMismatch {
        pinned: PublicKey,
        presented: Option<PublicKey>,
    },
    /// The server answered the encrypted handshake with a plaintext `ERROR_REPLY`: it is full,
    /// or it runs with `--insecure-plaintext`. Not authenticated (nothing before the handshake
    /// can be).
    #[error(
        "the server answered the encrypted handshake in plaintext: code {code}: {message}{}",
        if *code == ErrorCode::FrameTooLarge as u16 {
            " (a server run with --insecure-plaintext answers a handshake so; connect to it \
             without a server key, for local benchmarks only)"
        } else {
            ""
        }
    )]
    PlaintextAnswer { code: u16, message: String },
    /// The encrypted transport failed: a handshake the server did not complete properly, a
    /// record that failed authentication (altered, replayed, reordered) or any other
    /// [`noise::Error`], as its text.
    #[error("the encrypted transport failed: {0}")]
    Encryption(String),
}

impl From<noise::Error> for CloseReason {
    fn from(e: noise::Error) -> Self {
        match e {
            noise::Error::ServerKeyMismatch { pinned, presented } => {
                CloseReason::ServerKeyMismatch { pinned, presented }
            }
            other => CloseReason::Encryption(other.to_string()),
        }
    }
}

impl CloseReason {
    /// The server's error code, when it gave one this crate knows.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CloseReason::Server { code, .. }
            | CloseReason::HandshakeRefused { code, .. }
            | CloseReason::PlaintextAnswer { code, .. } => ErrorCode::from_u16(*code),
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

/// The layer under the frames.
#[derive(Debug)]
enum Wire {
    Plaintext,
    Handshaking(Box<Handshake>),
    Established(Transport),
}

/// One client connection's protocol state. See the module docs.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    wire: Wire,
    /// Received handshake messages or records not yet taken in whole (encrypted only).
    cipher_in: BytesMut,
    /// Handshake messages not yet taken by [`Session::poll_transmit`] (encrypted only).
    handshake_out: BytesMut,
    /// The server's static key, once the handshake proved it.
    server_key: Option<PublicKey>,
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
    /// [`poll_transmit`](Self::poll_transmit), after the first handshake message if the
    /// session is encrypted. A session whose handshake cannot start (the operating system's
    /// random number generator failed) is closed at once with [`CloseReason::Encryption`].
    pub fn new(config: SessionConfig, now: Instant) -> Session {
        let mut handshake_out = BytesMut::new();
        let wire = match config.encryption {
            Encryption::Plaintext => Ok(Wire::Plaintext),
            // A client's static key identifies nothing in Courier (users log in with frames):
            // a fresh one per connection is as good as a kept one and needs no storage.
            pinned => Keypair::generate().and_then(|local| {
                let handshake = match pinned {
                    Encryption::Pinned(key) => {
                        Handshake::initiator_ik(&local, key, &mut handshake_out)
                    }
                    _ => Handshake::initiator_xx(&local, None, &mut handshake_out),
                };
                handshake.map(|h| Wire::Handshaking(Box::new(h)))
            }),
        };
        let (wire, failed) = match wire {
            Ok(wire) => (wire, None),
            Err(e) => (Wire::Plaintext, Some(e)),
        };
        let mut session = Session {
            decoder: Decoder::new(config.max_frame_len),
            config,
            wire,
            cipher_in: BytesMut::new(),
            handshake_out,
            server_key: None,
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
        if let Some(e) = failed {
            session.close_with(e.into());
        }
        session
    }

    /// The server's static key once the encrypted handshake is done: the pinned key, or with
    /// [`Encryption::TrustOnFirstUse`] the key the server proved it holds (show it to the
    /// person so they can pin it). `None` before, and on a plaintext session.
    pub fn server_key(&self) -> Option<PublicKey> {
        self.server_key
    }

    /// Which handshake secured the session: `Some` once it is done, `None` before and on a
    /// plaintext session.
    pub fn pattern(&self) -> Option<Pattern> {
        match (&self.wire, self.config.encryption) {
            (Wire::Established(_), Encryption::Pinned(_)) => Some(Pattern::Ik),
            (Wire::Established(_), _) => Some(Pattern::Xx),
            _ => None,
        }
    }

    /// Whether the bytes of this session are encrypted and the handshake is over, so that
    /// frames flow.
    pub fn is_secured(&self) -> bool {
        matches!(self.wire, Wire::Established(_))
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
    /// bytes that was. Write them all, in order. On an encrypted session these are handshake
    /// messages and then, once the handshake is over, the queued frames sealed as one record;
    /// frames wait while the handshake runs.
    pub fn poll_transmit(&mut self, buf: &mut BytesMut) -> usize {
        let start = buf.len();
        self.poll_handshake_transmit(buf);
        let Wire::Established(transport) = &mut self.wire else {
            if matches!(self.wire, Wire::Plaintext) {
                self.poll_plaintext(buf);
            }
            return buf.len() - start;
        };
        if !self.outbox.is_empty() {
            match transport.seal(&self.outbox, buf) {
                Ok(()) => self.outbox.clear(),
                Err(e) => self.close_with(e.into()),
            }
        }
        buf.len() - start
    }

    /// Moves only the handshake messages not yet taken into `buf`, leaving frames queued; for
    /// a driver that runs the handshake before it lets `HELLO` go (the test harness). Returns
    /// the bytes moved.
    pub fn poll_handshake_transmit(&mut self, buf: &mut BytesMut) -> usize {
        let n = self.handshake_out.len();
        if n > 0 {
            buf.extend_from_slice(&self.handshake_out);
            self.handshake_out.clear();
        }
        n
    }

    fn poll_plaintext(&mut self, buf: &mut BytesMut) -> usize {
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
        if self.cipher_in.is_empty() {
            self.cipher_in = BytesMut::new();
        }
        if self.handshake_out.is_empty() {
            self.handshake_out = BytesMut::new();
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

    /// Takes the record layer out of an encrypted session whose handshake is done, with the
    /// received bytes not yet opened (a partial record, at most); call it before
    /// [`take_undecoded`](Self::take_undecoded). For a driver that goes on writing hand-made
    /// frames itself (the test harness): it seals and opens with the returned [`Transport`].
    /// `None` while the handshake runs and on a plaintext session.
    pub fn take_transport(&mut self) -> Option<(Transport, BytesMut)> {
        if !matches!(self.wire, Wire::Established(_)) {
            return None;
        }
        let Wire::Established(transport) = std::mem::replace(&mut self.wire, Wire::Plaintext)
        else {
            unreachable!("checked above")
        };
        Some((transport, std::mem::take(&mut self.cipher_in)))
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
        if matches!(self.wire, Wire::Plaintext) {
            self.inbuf.extend_from_slice(bytes);
        } else {
            self.cipher_in.extend_from_slice(bytes);
            if let Err(reason) = self.unwrap_input() {
                return self.close_with(reason);
            }
        }
        while self.state != State::Closed {
            match self.decoder.decode(&mut self.inbuf) {
                Ok(Some(env)) => self.on_frame(env.request_id, env.frame, now),
                Ok(None) => break,
                Err(e) => self.close_with(CloseReason::Malformed(e)),
            }
        }
    }

    /// Runs the handshake on the received bytes and opens every whole record into `inbuf`.
    fn unwrap_input(&mut self) -> Result<(), CloseReason> {
        if let Wire::Handshaking(handshake) = &mut self.wire {
            if self.cipher_in.starts_with(&[0, 0]) {
                // Not a handshake message: a plaintext frame, perhaps not all there yet.
                return plaintext_answer(&self.cipher_in).map_or(Ok(()), Err);
            }
            let Some(done) = handshake.handle(&mut self.cipher_in, &mut self.handshake_out)? else {
                return Ok(());
            };
            self.server_key = Some(done.remote);
            self.wire = Wire::Established(done.transport);
        }
        if let Wire::Established(transport) = &mut self.wire {
            transport.open_all(&mut self.cipher_in, MAX_RECORD_LEN, &mut self.inbuf)?;
        }
        Ok(())
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
                        key: crate::noise::PublicKey::from_slice(&r.key),
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
        self.cipher_in = BytesMut::new();
        self.handshake_out = BytesMut::new();
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

/// A plaintext `ERROR_REPLY` where the server's first handshake message should be: no
/// handshake message is 0 bytes long, so a length starting `00 00` is a Courier frame's 4-byte
/// length (NOISE.md section 2). `None` while the frame is not all there.
fn plaintext_answer(input: &[u8]) -> Option<CloseReason> {
    if input.len() < 2 || input[..2] != [0, 0] {
        return None;
    }
    let mut frame = BytesMut::from(input);
    match Decoder::new(DEFAULT_MAX_FRAME_LEN).decode(&mut frame) {
        Ok(Some(env)) => match env.frame {
            Frame::ErrorReply(e) => Some(CloseReason::PlaintextAnswer {
                code: e.code,
                message: e.message,
            }),
            other => Some(CloseReason::Encryption(format!(
                "the server answered the encrypted handshake with a plaintext {}: it runs \
                 with --insecure-plaintext",
                other.name()
            ))),
        },
        Ok(None) => None,
        Err(e) => Some(CloseReason::Malformed(e)),
    }
}

#[cfg(test)]
mod tests;
