//! One client connection as a small state machine: connect → HELLO → RESUME → (SYNC) → ready,
//! then setup requests, traffic, receipts and heartbeats.
//!
//! The protocol (HELLO/WELCOME, request ids, reply matching, heartbeat, close reasons) is the
//! connection's [`Session`], boxed and present only while connected. A [`Conn`] never touches
//! its socket: bytes come in through [`Conn::on_input`], the session's events move this state
//! machine, and every output is moved to `wbuf`, which the worker's event loop writes. Buffers
//! are freed whenever nothing is in flight, so an idle connection costs this struct and its
//! session.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use courier_protocol::session::{CloseReason, Encryption, Event};
use courier_protocol::{
    self as proto, ErrorCode, Frame, Message, MessageKind, Session, SessionConfig,
};
use rand::Rng;

use super::Cx;
use crate::ipc::{ConnSpec, ThreadSetup};
use crate::ledger::{BodyHeader, RangeSet, SeenLedger, SentLedger};
use crate::sys::monotonic_ns;

/// Messages per SYNC page.
const SYNC_LIMIT: u16 = 500;
/// Requests in flight per connection: far above any send window plus a read's receipts.
const MAX_OUTSTANDING: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not opened yet.
    Idle,
    /// TCP connect in progress.
    Connecting,
    AwaitWelcome,
    AwaitAuth,
    /// Authenticated; the SYNC after RESUME is in progress.
    InitialSync,
    /// Authenticated and synced.
    Ready,
    /// Closed; waiting for a retry or a planned reconnect.
    Down,
    /// Given up on.
    Failed,
}

impl State {
    /// States that count against the worker's limit on concurrent handshakes.
    pub fn is_handshaking(self) -> bool {
        matches!(
            self,
            State::Connecting | State::AwaitWelcome | State::AwaitAuth | State::InitialSync
        )
    }
}

/// A thread the connection takes part in, at run time.
#[derive(Debug)]
pub struct Slot {
    pub key: u32,
    pub send: bool,
    /// Server thread id; 0 until known.
    pub thread_id: u64,
    /// Next sequence number to send (its client id is `ledger::client_msg_id`).
    pub next_seq: u64,
    pub acked: RangeSet,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    request_id: u32,
    slot: u16,
    seq: u64,
    sent_ns: u64,
}

#[derive(Debug)]
enum SetupOp {
    OpenDirect {
        slot: usize,
        peer: u64,
    },
    CreateGroup {
        slot: usize,
        name: String,
        members: Vec<u64>,
    },
    AddMembers {
        slot: usize,
        members: Vec<u64>,
    },
    ContactAdd {
        user: u64,
    },
    PresenceSubscribe {
        users: Vec<u64>,
    },
}

/// A request whose answer moves the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Nothing,
    Auth(u32),
    Sync(u32),
    Setup(u32),
}

/// What the event loop must do after input or a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    /// Close the connection; `retry` = try to connect again later.
    Close {
        retry: bool,
    },
}

pub struct Conn {
    pub user: u32,
    token: Bytes,
    pub spec_server: std::net::SocketAddr,
    pub source: std::net::Ipv4Addr,
    contacts: Vec<u64>,
    setups: Vec<Option<ThreadSetup>>,
    pub slots: Vec<Slot>,

    pub state: State,
    pub sock: Option<mio::net::TcpStream>,
    /// The protocol state of the current connection; `None` while not connected.
    session: Option<Box<Session>>,
    /// Pinned server key, or plaintext: given to every session of this connection.
    pub encryption: Encryption,
    pub wbuf: BytesMut,
    /// `--ws`: the WebSocket layer of the current connection.
    pub ws: Option<Box<super::ws::WsLink>>,
    /// Queued in the worker's dirty list.
    pub dirty: bool,
    awaiting: Awaiting,
    /// The SYNC watermark; starts at the run's start.
    since: u64,
    /// Against a cluster: the last completed SYNC's watermark per node (`since` is their
    /// minimum); empty against one node, or when `since` was set from the run's start.
    since_vector: Box<[u64]>,
    /// The `since` of the running SYNC.
    sync_from: u64,
    /// Whether the running SYNC is a final one the parent asked for.
    pub final_sync_wanted: bool,
    // Boxed on purpose (clippy::box_collection): `Option<Box<_>>` is 8 bytes in every one of
    // 18,000 connections, the collection itself 32-48, and most connections never use it.
    #[allow(clippy::box_collection)]
    setup_queue: Option<Box<VecDeque<SetupOp>>>,
    /// Whether the presence subscription must be renewed after a reconnect.
    subscribed: bool,
    pub started_ns: u64,
    /// Failed attempts since the last success.
    pub attempts: u32,
    inflight: Vec<InFlight>,
    /// (logical thread, sender) → sequence numbers seen. Persists across reconnects.
    #[allow(clippy::box_collection)]
    seen: Option<Box<HashMap<(u32, u32), RangeSet>>>,
    /// (server thread, last pushed message id) in this connection lifetime.
    last_push: Vec<(u64, u64)>,
    /// (server thread, newest message) to acknowledge with a receipt.
    pending_receipts: Vec<(u64, u64)>,
}

impl Conn {
    pub fn new(spec: ConnSpec, run_since: u64) -> Self {
        let token = Bytes::from(hex::decode(&spec.token).unwrap_or_default());
        let slots = spec
            .threads
            .iter()
            .map(|t| Slot {
                key: t.key,
                send: t.send,
                thread_id: 0,
                next_seq: 1,
                acked: RangeSet::new(),
            })
            .collect();
        let setups = spec.threads.into_iter().map(|t| t.setup).collect();
        Self {
            user: spec.user,
            token,
            spec_server: spec.server,
            source: spec.source,
            contacts: spec.contacts,
            setups,
            slots,
            state: State::Idle,
            sock: None,
            session: None,
            encryption: Encryption::Plaintext,
            wbuf: BytesMut::new(),
            ws: None,
            dirty: false,
            awaiting: Awaiting::Nothing,
            since: run_since,
            since_vector: Box::default(),
            sync_from: run_since,
            final_sync_wanted: false,
            setup_queue: None,
            subscribed: false,
            started_ns: 0,
            attempts: 0,
            inflight: Vec::new(),
            seen: None,
            last_push: Vec::new(),
            pending_receipts: Vec::new(),
        }
    }

    /// Sends through the session; the request id, or 0 if it refused (closed, or
    /// [`MAX_OUTSTANDING`] reached). A refusal closes the session, so that the connection is
    /// closed at its next read and counted (`SEND_REFUSED`).
    fn send_frame(&mut self, frame: impl Into<Frame>, _now_ns: u64) -> u32 {
        let Some(session) = self.session.as_mut() else {
            return 0;
        };
        match session.send_request(&frame.into()) {
            Ok(id) => {
                session.poll_transmit(&mut self.wbuf);
                id
            }
            Err(_) => {
                session.close();
                0
            }
        }
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// The TCP connection is established: a new session, which says HELLO.
    pub fn on_connected(&mut self, now: Instant) {
        let config = SessionConfig {
            client_name: "courier-loadgen".into(),
            max_frame_len: proto::MAX_FRAME_LEN,
            max_outstanding: MAX_OUTSTANDING,
            encryption: self.encryption,
        };
        let mut session = Box::new(Session::new(config, now));
        session.poll_transmit(&mut self.wbuf);
        self.session = Some(session);
        self.state = State::AwaitWelcome;
    }

    /// Forgets everything that lives only as long as one connection.
    pub fn reset_connection(&mut self) {
        self.sock = None;
        self.session = None;
        self.wbuf = BytesMut::new();
        self.ws = None;
        self.awaiting = Awaiting::Nothing;
        self.inflight = Vec::new();
        self.last_push = Vec::new();
        self.pending_receipts = Vec::new();
        self.setup_queue = None;
    }

    /// Bytes from the server, split anywhere.
    pub fn on_input(&mut self, bytes: &[u8], cx: &mut Cx) -> Outcome {
        let Some(session) = self.session.as_mut() else {
            return Outcome::Continue;
        };
        session.handle_input(bytes, cx.now());
        // The handshake's answer (XX message 3) and the frames it held back (HELLO).
        session.poll_transmit(&mut self.wbuf);
        self.drain_events(cx)
    }

    /// Acts on every event the session has; stops at the first that closes.
    fn drain_events(&mut self, cx: &mut Cx) -> Outcome {
        while let Some(event) = self.session.as_mut().and_then(|s| s.poll_event()) {
            if let Outcome::Close { retry } = self.on_event(event, cx) {
                return Outcome::Close { retry };
            }
        }
        if let Some(session) = self.session.as_mut() {
            // Free the read buffer of an idle connection.
            session.shrink_idle();
        }
        Outcome::Continue
    }

    /// Handles one event of the session.
    fn on_event(&mut self, event: Event, cx: &mut Cx) -> Outcome {
        let now = cx.now_ns;
        let (rid, frame) = match event {
            Event::Welcomed(_) => {
                let id = self.send_frame(
                    proto::Resume {
                        token: self.token.clone(),
                    },
                    now,
                );
                self.awaiting = Awaiting::Auth(id);
                self.state = State::AwaitAuth;
                return Outcome::Continue;
            }
            Event::Authenticated {
                request_id,
                auth: ok,
            } if self.awaiting == Awaiting::Auth(request_id) => {
                cx.counters.auth_ok += 1;
                if !ok.token.is_empty() && ok.token != self.token {
                    // Copied: a slice would pin the whole read buffer it came from.
                    self.token = Bytes::copy_from_slice(&ok.token);
                }
                crate::hist::record_ns(&mut cx.lat.connect, now.saturating_sub(self.started_ns));
                self.last_push.clear();
                if cx.sync_on_connect {
                    self.state = State::InitialSync;
                    self.start_sync(now);
                } else {
                    self.become_ready(cx);
                }
                return Outcome::Continue;
            }
            // Logged in again on a logged-in connection: the loadgen never asks for that.
            Event::Authenticated { .. } => return Outcome::Continue,
            Event::Reply { request_id, frame } => (request_id, frame),
            Event::Push(frame) => (0, frame),
            Event::Redirect { addr, key, .. } => {
                if let Ok(addr) = addr.parse() {
                    self.spec_server = addr;
                }
                // The node that sent it proved the key this connection pinned; it vouches for
                // the key of the node it names.
                if let (Some(key), Encryption::Pinned(_)) = (key, self.encryption) {
                    self.encryption = Encryption::Pinned(key);
                }
                *cx.counters.errors.entry("REDIRECT".into()).or_default() += 1;
                return Outcome::Close { retry: true };
            }
            Event::Closed { reason } => return self.on_session_closed(reason, cx),
        };
        match frame {
            Frame::SyncBatch(b) if self.awaiting == Awaiting::Sync(rid) => {
                for m in &b.messages {
                    self.on_message(m, false, cx);
                }
                if b.more {
                    // A cluster's walk carries its per-node watermarks back on every page.
                    let vector = b.vector.0.map(|v| proto::SyncVector {
                        since: self.since_vector.to_vec(),
                        watermarks: v.watermarks,
                        after_node: v.next_node,
                    });
                    let id = self.send_frame(
                        proto::Sync {
                            since: self.since,
                            after_thread: b.next_thread,
                            after_message: b.next_message,
                            limit: SYNC_LIMIT,
                            watermark: b.watermark,
                            vector: proto::Tail(vector),
                        },
                        now,
                    );
                    self.awaiting = Awaiting::Sync(id);
                } else {
                    self.since = b.watermark;
                    self.since_vector = b.vector.0.map(|v| v.watermarks).unwrap_or_default().into();
                    self.awaiting = Awaiting::Nothing;
                    if self.final_sync_wanted {
                        if self.sync_from <= cx.run_since {
                            self.final_sync_wanted = false;
                            cx.final_sync_pending = cx.final_sync_pending.saturating_sub(1);
                        } else {
                            // The final sync was asked for while a later one ran: go again.
                            self.since = cx.run_since;
                            self.since_vector = Box::default();
                            self.start_sync(now);
                            return Outcome::Continue;
                        }
                    }
                    if self.state == State::InitialSync {
                        self.become_ready(cx);
                    }
                }
            }
            Frame::ThreadInfo(t) if self.awaiting == Awaiting::Setup(rid) => {
                if let Some(SetupOp::OpenDirect { slot, .. } | SetupOp::CreateGroup { slot, .. }) =
                    self.setup_queue.as_mut().and_then(|q| q.pop_front())
                {
                    self.slots[slot].thread_id = t.thread.id;
                    cx.threads_out.push((self.slots[slot].key, t.thread.id));
                }
                self.next_setup(cx);
            }
            Frame::Done(_) if self.awaiting == Awaiting::Setup(rid) => {
                if let Some(q) = self.setup_queue.as_mut() {
                    q.pop_front();
                }
                self.next_setup(cx);
            }
            Frame::Sent(s) => {
                if let Some(i) = self.inflight.iter().position(|f| f.request_id == rid) {
                    let f = self.inflight.swap_remove(i);
                    crate::hist::record_ns(&mut cx.lat.ack, now.saturating_sub(f.sent_ns));
                    debug_assert_eq!(
                        s.client_msg_id,
                        crate::ledger::client_msg_id(cx.run_id, f.seq)
                    );
                    if s.message < cx.run_since {
                        // An earlier message with this client id: nothing of this run was
                        // stored, so no recipient will see it. Not an ack, not a loss.
                        cx.counters.stale_acks += 1;
                    } else {
                        self.slots[f.slot as usize].acked.insert(f.seq);
                        cx.counters.acked += 1;
                    }
                }
            }
            Frame::MessagePush(p) => self.on_message(&p.message, true, cx),
            Frame::ErrorReply(e) => return self.on_error(rid, e.code, cx),
            // DONE of receipts and subscriptions, receipt/presence/typing pushes: nothing to do
            // beyond having read them. The session consumes PONG.
            _ => {}
        }
        Outcome::Continue
    }

    /// The session closed: count why, and say whether to try again.
    fn on_session_closed(&mut self, reason: CloseReason, cx: &mut Cx) -> Outcome {
        let (name, retry) = match reason {
            // The server announces a close; the EOF follows.
            CloseReason::Server { code, .. } => {
                let known = ErrorCode::from_u16(code);
                let retry = !matches!(known, Some(ErrorCode::SessionRevoked));
                (error_name(code), retry)
            }
            CloseReason::HandshakeRefused { code, .. } => (error_name(code), retryable(code)),
            CloseReason::VersionMismatch { .. } => ("VERSION_MISMATCH".to_string(), false),
            CloseReason::Malformed(_) => ("DECODE_ERROR".to_string(), true),
            CloseReason::UnexpectedFrame { .. } => ("UNEXPECTED_FRAME".to_string(), true),
            CloseReason::TimedOut { .. } => ("SERVER_SILENT".to_string(), true),
            CloseReason::Local => ("SEND_REFUSED".to_string(), true),
            // A wrong --server-key stays wrong: retrying would only repeat the refusal.
            CloseReason::ServerKeyMismatch { .. } => ("SERVER_KEY_MISMATCH".to_string(), false),
            CloseReason::PlaintextAnswer { code, .. } => (error_name(code), retryable(code)),
            CloseReason::Encryption(_) => ("ENCRYPTION_FAILED".to_string(), true),
            // Counted where the redirect came; the EOF is the worker's to see.
            CloseReason::Redirected | CloseReason::TransportClosed => {
                return Outcome::Close { retry: true }
            }
        };
        *cx.counters.errors.entry(name).or_default() += 1;
        Outcome::Close { retry }
    }

    fn on_error(&mut self, rid: u32, code: u16, cx: &mut Cx) -> Outcome {
        *cx.counters.errors.entry(error_name(code)).or_default() += 1;
        if let Some(i) = self.inflight.iter().position(|f| f.request_id == rid) {
            self.inflight.swap_remove(i);
            cx.counters.send_errors += 1;
            return Outcome::Continue;
        }
        match self.awaiting {
            Awaiting::Auth(id) if id == rid => Outcome::Close {
                retry: retryable(code),
            },
            Awaiting::Sync(id) if id == rid => Outcome::Close { retry: true },
            Awaiting::Setup(id) if id == rid => {
                cx.counters.setup_errors += 1;
                if let Some(q) = self.setup_queue.as_mut() {
                    if let Some(
                        SetupOp::CreateGroup { slot, .. } | SetupOp::OpenDirect { slot, .. },
                    ) = q.pop_front()
                    {
                        // Without the thread the chunks that follow cannot be added.
                        q.retain(
                            |op| !matches!(op, SetupOp::AddMembers { slot: s, .. } if *s == slot),
                        );
                    }
                }
                self.next_setup(cx);
                Outcome::Continue
            }
            _ => Outcome::Continue,
        }
    }

    fn start_sync(&mut self, now: u64) {
        self.sync_from = self.since;
        let id = self.send_frame(
            proto::Sync {
                since: self.since,
                after_thread: 0,
                after_message: 0,
                limit: SYNC_LIMIT,
                watermark: 0,
                vector: proto::Tail((!self.since_vector.is_empty()).then(|| proto::SyncVector {
                    since: self.since_vector.to_vec(),
                    watermarks: Vec::new(),
                    after_node: 0,
                })),
            },
            now,
        );
        self.awaiting = Awaiting::Sync(id);
    }

    /// A SYNC from the start of the run, asked for by the parent.
    pub fn start_final_sync(&mut self, run_since: u64, now: u64) {
        self.since = run_since;
        self.since_vector = Box::default();
        self.final_sync_wanted = true;
        if self.state == State::Ready && self.awaiting == Awaiting::Nothing {
            self.start_sync(now);
        }
        // Otherwise the SYNC after the next RESUME covers it, or the running one is redone
        // from `run_since` when it ends.
    }

    fn become_ready(&mut self, cx: &mut Cx) {
        self.state = State::Ready;
        self.attempts = 0;
        cx.counters.ready += 1;
        if self.subscribed && !self.contacts.is_empty() {
            let q = VecDeque::from([SetupOp::PresenceSubscribe {
                users: self.contacts.clone(),
            }]);
            self.setup_queue = Some(Box::new(q));
            cx.setup_pending += 1;
            self.next_setup(cx);
        }
        if self.final_sync_wanted && self.awaiting == Awaiting::Nothing {
            self.start_sync(cx.now_ns);
        }
    }

    /// Leaves the ready state (the connection closed).
    pub fn on_closed(&mut self, cx: &mut Cx) {
        if self.state == State::Ready {
            cx.counters.ready -= 1;
        }
        if self.setup_queue.is_some() {
            // An interrupted setup is not resumed: the parent sees it as a setup error.
            cx.counters.setup_errors += 1;
            cx.setup_pending = cx.setup_pending.saturating_sub(1);
        }
        self.reset_connection();
    }

    /// Starts the setup requests: threads this connection creates, contacts, presence.
    pub fn start_setup(&mut self, cx: &mut Cx) {
        let mut q = VecDeque::new();
        for (slot, setup) in self.setups.iter().enumerate() {
            match setup {
                Some(ThreadSetup::OpenDirect { peer }) => {
                    q.push_back(SetupOp::OpenDirect { slot, peer: *peer })
                }
                Some(ThreadSetup::CreateGroup {
                    name,
                    members,
                    chunk,
                }) => {
                    let chunk = (*chunk).max(1);
                    let mut parts = members.chunks(chunk);
                    let first = parts.next().unwrap_or_default().to_vec();
                    q.push_back(SetupOp::CreateGroup {
                        slot,
                        name: name.clone(),
                        members: first,
                    });
                    for part in parts {
                        q.push_back(SetupOp::AddMembers {
                            slot,
                            members: part.to_vec(),
                        });
                    }
                }
                None => {}
            }
        }
        for &user in &self.contacts {
            q.push_back(SetupOp::ContactAdd { user });
        }
        if !self.contacts.is_empty() {
            q.push_back(SetupOp::PresenceSubscribe {
                users: self.contacts.clone(),
            });
            self.subscribed = true;
        }
        if q.is_empty() {
            return;
        }
        self.setup_queue = Some(Box::new(q));
        cx.setup_pending += 1;
        self.next_setup(cx);
    }

    fn next_setup(&mut self, cx: &mut Cx) {
        let now = cx.now_ns;
        let Some(q) = self.setup_queue.as_ref() else {
            return;
        };
        let frame: Frame = match q.front() {
            None => {
                self.setup_queue = None;
                self.awaiting = Awaiting::Nothing;
                cx.setup_pending = cx.setup_pending.saturating_sub(1);
                if self.final_sync_wanted {
                    self.start_sync(now);
                }
                return;
            }
            Some(SetupOp::OpenDirect { peer, .. }) => proto::OpenDirect { peer: *peer }.into(),
            Some(SetupOp::CreateGroup { name, members, .. }) => proto::CreateGroup {
                name: name.clone(),
                members: members.clone(),
            }
            .into(),
            Some(SetupOp::AddMembers { slot, members }) => proto::AddMembers {
                thread: self.slots[*slot].thread_id,
                members: members.clone(),
            }
            .into(),
            Some(SetupOp::ContactAdd { user }) => proto::ContactAdd { user: *user }.into(),
            Some(SetupOp::PresenceSubscribe { users }) => proto::PresenceSubscribe {
                users: users.clone(),
            }
            .into(),
        };
        let id = self.send_frame(frame, now);
        self.awaiting = Awaiting::Setup(id);
    }

    /// Learns the server ids of the threads this connection sends in.
    pub fn learn_threads(&mut self, ids: &HashMap<u32, u64>) {
        for s in &mut self.slots {
            if let Some(&id) = ids.get(&s.key) {
                s.thread_id = id;
            }
        }
    }

    /// Indices of slots this connection sends in.
    pub fn sending_slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.send)
            .map(|(i, _)| i)
    }

    /// Sends one message in `slot` if the connection is ready and its window has room.
    pub fn try_send(&mut self, slot: usize, window: u32, cx: &mut Cx) -> bool {
        if self.state != State::Ready
            || self.inflight.len() >= window as usize
            || self.awaiting != Awaiting::Nothing
        {
            return false;
        }
        let s = &mut self.slots[slot];
        if s.thread_id == 0 {
            return false;
        }
        let (thread, key, seq) = (s.thread_id, s.key, s.next_seq);
        s.next_seq += 1;
        let now = monotonic_ns();
        if cx.typing && cx.rng.random_ratio(1, 10) {
            self.send_frame(
                proto::Typing {
                    thread,
                    active: true,
                },
                now,
            );
        }
        let header = BodyHeader {
            sent_ns: now,
            run_id: cx.run_id,
            thread: key,
            sender: self.user,
            seq,
        };
        header.write(cx.body_size, &mut cx.body);
        let body = cx.body.split().freeze();
        let request_id = self.send_frame(
            proto::Send {
                thread,
                client_msg_id: crate::ledger::client_msg_id(cx.run_id, seq),
                kind: MessageKind::Text,
                body,
                reply_to: 0,
            },
            now,
        );
        self.inflight.push(InFlight {
            request_id,
            slot: slot as u16,
            seq,
            sent_ns: now,
        });
        cx.counters.sent += 1;
        true
    }

    /// A message arrived by push (`push`) or in a sync batch.
    fn on_message(&mut self, m: &Message, push: bool, cx: &mut Cx) {
        if m.kind != MessageKind::Text {
            return;
        }
        let Some(h) = BodyHeader::parse(&m.body).filter(|h| h.run_id == cx.run_id) else {
            cx.counters.foreign += 1;
            return;
        };
        if h.sender == self.user {
            return;
        }
        let seen = self.seen.get_or_insert_with(Default::default);
        let new = seen.entry((h.thread, h.sender)).or_default().insert(h.seq);
        if !push {
            if new {
                cx.counters.delivered += 1;
                cx.counters.recovered_by_sync += 1;
            }
            return;
        }
        cx.counters.pushes += 1;
        let last = match self.last_push.iter_mut().find(|(t, _)| *t == m.thread) {
            Some(entry) => entry,
            None => {
                self.last_push.push((m.thread, 0));
                self.last_push.last_mut().expect("just pushed")
            }
        };
        if m.id == last.1 || (m.id < last.1 && !new) {
            cx.counters.duplicates += 1;
        } else if m.id < last.1 {
            cx.counters.out_of_order += 1;
        }
        last.1 = last.1.max(m.id);
        if new {
            cx.counters.delivered += 1;
            if cx.in_window {
                cx.counters.delivered_in_window += 1;
            }
            crate::hist::record_ns(
                &mut cx.lat.delivery,
                monotonic_ns().saturating_sub(h.sent_ns),
            );
        }
        if cx.receipts {
            match self
                .pending_receipts
                .iter_mut()
                .find(|(t, _)| *t == m.thread)
            {
                Some(r) => r.1 = r.1.max(m.id),
                None => self.pending_receipts.push((m.thread, m.id)),
            }
        }
    }

    /// Sends the receipts owed for what arrived in the last read.
    pub fn flush_receipts(&mut self, cx: &mut Cx) {
        if self.pending_receipts.is_empty() || self.state != State::Ready {
            return;
        }
        let now = cx.now_ns;
        for (thread, up_to) in std::mem::take(&mut self.pending_receipts) {
            self.send_frame(
                proto::Receipt {
                    thread,
                    kind: proto::ReceiptKind::Delivered,
                    up_to,
                },
                now,
            );
            cx.counters.receipts_sent += 1;
            if cx.read_receipts && cx.rng.random_bool(0.5) {
                self.send_frame(
                    proto::Receipt {
                        thread,
                        kind: proto::ReceiptKind::Read,
                        up_to,
                    },
                    now,
                );
                cx.counters.receipts_sent += 1;
            }
        }
    }

    /// Lets a ready connection's session send its PING when due, or give up on a server
    /// silent for three heartbeats.
    pub fn heartbeat(&mut self, cx: &mut Cx) -> Outcome {
        if self.state != State::Ready {
            return Outcome::Continue;
        }
        let Some(session) = self.session.as_mut() else {
            return Outcome::Continue;
        };
        session.handle_timeout(cx.now());
        if session.poll_transmit(&mut self.wbuf) > 0 {
            cx.counters.pings += 1;
        }
        self.drain_events(cx)
    }

    /// This connection's part of the run's ledgers.
    pub fn ledgers(&self, sent: &mut Vec<SentLedger>, seen: &mut Vec<SeenLedger>) {
        for s in &self.slots {
            if s.send && !s.acked.is_empty() {
                sent.push(SentLedger {
                    thread: s.key,
                    sender: self.user,
                    acked: s.acked.clone(),
                });
            }
        }
        if let Some(map) = &self.seen {
            for (&(thread, sender), set) in map.iter() {
                seen.push(SeenLedger {
                    user: self.user,
                    thread,
                    sender,
                    seen: set.clone(),
                });
            }
        }
    }
}

/// The name an error code is counted under.
fn error_name(code: u16) -> String {
    ErrorCode::from_u16(code).map_or_else(|| format!("CODE_{code}"), |c| c.name().to_string())
}

/// Whether a refused handshake or login may work later; a bad token or version will not.
fn retryable(code: u16) -> bool {
    matches!(
        ErrorCode::from_u16(code),
        Some(
            ErrorCode::ServerFull
                | ErrorCode::ShuttingDown
                | ErrorCode::LoginThrottled
                | ErrorCode::Unavailable
        )
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use courier_protocol::{encode, AuthOk, Decoder, Envelope, Welcome};
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;
    use crate::hist::Latencies;
    use crate::ipc::Counters;

    const SECOND: u64 = 1_000_000_000;

    fn spec() -> ConnSpec {
        ConnSpec {
            user: 0,
            token: "00".repeat(32),
            server: "127.0.0.1:1".parse().unwrap(),
            source: std::net::Ipv4Addr::LOCALHOST,
            threads: Vec::new(),
            contacts: Vec::new(),
            key: None,
        }
    }

    fn cx(now_ns: u64) -> Cx {
        Cx {
            now_ns,
            epoch: (Instant::now(), now_ns),
            run_id: 1,
            run_since: 0,
            body_size: 64,
            body: BytesMut::new(),
            counters: Counters::default(),
            lat: Latencies::default(),
            sync_on_connect: false,
            receipts: false,
            read_receipts: false,
            typing: false,
            in_window: false,
            setup_pending: 0,
            final_sync_pending: 0,
            threads_out: Vec::new(),
            rng: SmallRng::seed_from_u64(1),
        }
    }

    /// What the connection wrote, decoded; the buffer is left empty.
    fn written(c: &mut Conn) -> Vec<Envelope> {
        let decoder = Decoder::default();
        std::iter::from_fn(|| decoder.decode(&mut c.wbuf).unwrap()).collect()
    }

    fn bytes(request_id: u32, frame: Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        encode(request_id, &frame, &mut buf);
        buf
    }

    /// Driven by hand through the session: HELLO, RESUME, ready; PING each heartbeat; after
    /// three heartbeats with nothing from the server, closed and counted, to be retried.
    #[test]
    fn a_ready_connection_pings_on_schedule_and_gives_up_a_silent_server() {
        let mut c = Conn::new(spec(), 0);
        let mut cx = cx(SECOND);
        c.on_connected(cx.now());
        let hello = written(&mut c);
        assert!(matches!(
            hello[..],
            [Envelope {
                frame: Frame::Hello(_),
                ..
            }]
        ));
        let welcome = Welcome {
            version: proto::VERSION,
            max_frame: 65536,
            heartbeat_secs: 1,
            node: "n1".into(),
        };
        let input = bytes(hello[0].request_id, welcome.into());
        assert_eq!(c.on_input(&input, &mut cx), Outcome::Continue);
        assert_eq!(c.state, State::AwaitAuth);
        let resume = written(&mut c);
        assert!(matches!(
            resume[..],
            [Envelope {
                frame: Frame::Resume(_),
                ..
            }]
        ));
        let auth = AuthOk {
            token: c.token.clone(),
            ..AuthOk::default()
        };
        let input = bytes(resume[0].request_id, auth.into());
        assert_eq!(c.on_input(&input, &mut cx), Outcome::Continue);
        assert!(c.is_ready());

        for ping in 1..=2 {
            cx.now_ns += SECOND;
            assert_eq!(c.heartbeat(&mut cx), Outcome::Continue);
            let sent = written(&mut c);
            assert!(
                matches!(
                    sent[..],
                    [Envelope {
                        frame: Frame::Ping(_),
                        ..
                    }]
                ),
                "{sent:?}"
            );
            assert_eq!(cx.counters.pings, ping);
        }
        cx.now_ns += SECOND - 1;
        assert_eq!(c.heartbeat(&mut cx), Outcome::Continue, "not yet");
        cx.now_ns += 1;
        assert_eq!(c.heartbeat(&mut cx), Outcome::Close { retry: true });
        assert_eq!(cx.counters.errors.get("SERVER_SILENT"), Some(&1));
        assert_eq!(
            cx.now().duration_since(cx.epoch.0),
            Duration::from_secs(3),
            "three heartbeats after the AUTH_OK"
        );
    }

    /// On a cluster: a connection pinned to its node's key that is sent elsewhere by a
    /// REDIRECT reconnects to the address it names pinning the key it names (driven by hand
    /// through the Noise handshake and records, as a server would answer).
    #[test]
    fn a_redirect_moves_the_connection_and_pins_the_key_it_names() {
        use courier_protocol::noise::{Handshake, Keypair, PublicKey, Transport, MAX_RECORD_LEN};

        /// Opens what the connection wrote and decodes its frames.
        fn opened(c: &mut Conn, t: &mut Transport) -> Vec<Envelope> {
            let mut sealed = c.wbuf.split();
            let mut plain = BytesMut::new();
            t.open_all(&mut sealed, MAX_RECORD_LEN, &mut plain).unwrap();
            let decoder = Decoder::default();
            std::iter::from_fn(|| decoder.decode(&mut plain).unwrap()).collect()
        }
        fn sealed(t: &mut Transport, request_id: u32, frame: Frame) -> BytesMut {
            let mut out = BytesMut::new();
            t.seal(&bytes(request_id, frame), &mut out).unwrap();
            out
        }

        let node = Keypair::from_private([0x21; 32]);
        let other = PublicKey::from_bytes([0x4b; 32]);
        let mut c = Conn::new(spec(), 0);
        c.encryption = Encryption::Pinned(node.public());
        let mut cx = cx(SECOND);
        c.on_connected(cx.now());
        let mut first = c.wbuf.split();
        let mut answer = BytesMut::new();
        let established = Handshake::responder(&node)
            .handle(&mut first, &mut answer)
            .unwrap()
            .expect("IK is one message each way");
        let mut t = established.transport;
        assert_eq!(c.on_input(&answer, &mut cx), Outcome::Continue);
        let hello = opened(&mut c, &mut t);
        assert!(
            matches!(
                hello[..],
                [Envelope {
                    frame: Frame::Hello(_),
                    ..
                }]
            ),
            "{hello:?}"
        );
        let welcome = Welcome {
            version: proto::VERSION,
            max_frame: 65536,
            heartbeat_secs: 30,
            node: "n1".into(),
        };
        let input = sealed(&mut t, hello[0].request_id, welcome.into());
        assert_eq!(c.on_input(&input, &mut cx), Outcome::Continue);
        let resume = opened(&mut c, &mut t);
        assert!(
            matches!(
                resume[..],
                [Envelope {
                    frame: Frame::Resume(_),
                    ..
                }]
            ),
            "{resume:?}"
        );
        let redirect = proto::Redirect {
            node: "n2".into(),
            addr: "127.0.0.2:7000".into(),
            key: bytes::Bytes::copy_from_slice(other.as_bytes()),
        };
        let input = sealed(&mut t, 0, redirect.into());
        assert_eq!(c.on_input(&input, &mut cx), Outcome::Close { retry: true });
        assert_eq!(c.spec_server, "127.0.0.2:7000".parse().unwrap());
        assert_eq!(c.encryption, Encryption::Pinned(other));
    }

    /// An idle connection costs this struct and nothing else; keep it small at 18k a worker.
    #[test]
    fn an_idle_connection_is_small() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 384, "Conn is {size} bytes");
        let c = Conn::new(spec(), 0);
        assert_eq!((c.wbuf.capacity(), c.inflight.capacity()), (0, 0));
        assert!(c.session.is_none() && c.seen.is_none() && c.setup_queue.is_none());
    }
}
