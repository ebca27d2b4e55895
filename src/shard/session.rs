//! What a shard does with each frame: the session state machine (hello, authentication,
//! logout), administration, and handing chat requests to the right engine. Presence requests
//! go to the handlers in `presence.rs`.
//!
//! ```text
//!  AwaitHello --HELLO--> AwaitAuth --RESUME ok-----------------> Authed
//!                            |  \--REGISTER/LOGIN--> Authenticating --ok--^
//!                            |                             \--error--> AwaitAuth
//!  anything else before auth: HANDSHAKE_REQUIRED / NOT_AUTHENTICATED, then close
//! ```
//!
//! In a cluster, REGISTER and LOGIN (by the handle's partition) and RESUME (by the partition in
//! the token) that reach a node other than the user's home are answered `REDIRECT` and closed
//! before any password or token work: only the home holds the account.

use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;
use courier_protocol::{
    AuthOk, Done, ErrorCode, ErrorReply, Frame, Pong, Redirect, Stat, Stats, UserInfo, Welcome,
    VERSION,
};
use crossbeam_channel::TrySendError;

use super::auth_pool::{AuthRequest, Job};
use super::conn::State;
use super::mailbox::ShardMsg;
use super::read_pool::{ReadRequest, Refused};
use super::Shard;
use crate::caller::{Caller, ConnRef, UsersChecked};
use crate::chat::Engine;
use crate::cluster::{Home, Router};
use crate::metrics::{Reason, ShardMetrics};
use crate::push;
use crate::session::{AuthError, Authed, TokenDigest};

/// What a client is told when the server failed: never the internal error's text (it goes to
/// the log with the request id).
const INTERNAL_MESSAGE: &str =
    "the server failed on its side (details are in its log); retry in a moment";

/// Longest `HELLO.client`, in bytes.
const MAX_CLIENT_NAME: usize = 64;

/// The first code of server-to-client frames: a client sending one is speaking nonsense.
const FIRST_SERVER_CODE: u8 = 0x80;

impl Shard {
    /// Handles one decoded frame from the connection in `slot`.
    pub(super) fn on_frame(&mut self, slot: usize, request_id: u32, frame: Frame) {
        if request_id == 0 {
            // Id 0 marks pushes and close announcements (PROTOCOL.md section 4): any answer
            // to it would look like one. A client that sends it is broken; say so and close.
            self.reply_error(
                slot,
                0,
                ErrorCode::Malformed,
                "request id 0 is reserved for pushes: number requests from 1",
            );
            self.close_soon(slot, Reason::ProtocolError);
            return;
        }
        // One clock read per frame (both units from it).
        let now = self.epoch.elapsed();
        let (now_ms, now_secs) = (now.as_millis() as u32, now.as_secs() as u32);
        let (rate, burst) = (self.core.config.rate_limit, self.burst());
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let state = conn.state;
        if state == State::Authed {
            conn.last_frame = now_secs;
        }
        if state != State::AwaitHello && !conn.rate.take(rate, burst, now_ms) {
            ShardMetrics::add(&self.metrics().rate_limited, 1);
            // TYPING is never answered, so a dropped one needs no answer either.
            if !matches!(frame, Frame::Typing(_)) {
                self.reply_error(
                    slot,
                    request_id,
                    ErrorCode::RateLimited,
                    "too many requests: slow down",
                );
            }
            return;
        }
        match (state, frame) {
            (State::AwaitHello, Frame::Hello(hello)) if hello.client.len() > MAX_CLIENT_NAME => {
                self.reply_error(
                    slot,
                    request_id,
                    ErrorCode::InvalidArgument,
                    "HELLO.client is at most 64 bytes; say HELLO again with a shorter one",
                )
            }
            (State::AwaitHello, Frame::Hello(hello)) => {
                self.on_hello(slot, request_id, hello.version)
            }
            (_, Frame::Hello(_)) | (State::AwaitHello, _) => self.fail(
                slot,
                request_id,
                ErrorCode::HandshakeRequired,
                Reason::ProtocolError,
            ),
            (_, Frame::Ping(p)) => {
                if self.core.faults.panic_on_ping == Some(p.nonce) {
                    panic!(
                        "fault injection: PING {} ({})",
                        p.nonce,
                        super::FAULT_PANIC_ON_PING
                    );
                }
                self.send(slot, request_id, &Frame::Pong(Pong { nonce: p.nonce }))
            }
            (State::AwaitAuth, Frame::Register(r))
                if self.redirect(
                    slot,
                    redirect_to(&self.core.router, self.core.router.handle_home(&r.handle)),
                ) => {}
            (State::AwaitAuth, Frame::Login(l))
                if self.redirect(
                    slot,
                    redirect_to(&self.core.router, self.core.router.handle_home(&l.handle)),
                ) => {}
            (State::AwaitAuth, Frame::Resume(r))
                if self.redirect(
                    slot,
                    redirect_to(&self.core.router, self.core.router.token_home(&r.token)),
                ) => {}
            (State::AwaitAuth, Frame::Register(r)) => {
                let from = self.peer_ip(slot);
                self.start_auth(
                    slot,
                    request_id,
                    Job::Register {
                        handle: r.handle,
                        password: r.password,
                        device: r.device,
                        from,
                    },
                )
            }
            (State::AwaitAuth, Frame::Login(l)) => {
                let from = self.peer_ip(slot);
                self.start_auth(
                    slot,
                    request_id,
                    Job::Login {
                        handle: l.handle,
                        password: l.password,
                        device: l.device,
                        from,
                    },
                )
            }
            (State::AwaitAuth, Frame::Resume(r)) => {
                let from = self.peer_ip(slot);
                match self.core.accounts.resume(&r.token, from) {
                    Ok(authed) => self.finish_auth(slot, request_id, authed),
                    Err(e) => self.auth_failed(slot, request_id, e),
                }
            }
            (State::Authenticating, Frame::Register(_) | Frame::Login(_) | Frame::Resume(_)) => {
                self.reply_error(
                    slot,
                    request_id,
                    ErrorCode::InvalidArgument,
                    "an authentication is already in progress",
                )
            }
            (State::Authed, Frame::Register(_) | Frame::Login(_) | Frame::Resume(_)) => self
                .reply_error(
                    slot,
                    request_id,
                    ErrorCode::AlreadyAuthenticated,
                    "this connection is already logged in",
                ),
            (State::AwaitAuth | State::Authenticating, _) => self.fail(
                slot,
                request_id,
                ErrorCode::NotAuthenticated,
                Reason::ProtocolError,
            ),
            (State::Authed, frame) => self.on_authed_frame(slot, request_id, frame),
        }
    }

    /// The source address of the connection in `slot`, as the authentication throttles count
    /// it: asked of the socket when a request arrives (a `Conn` does not keep it).
    fn peer_ip(&self, slot: usize) -> IpAddr {
        let from = self.conns.get(slot).and_then(|c| c.stream.peer_addr().ok());
        from.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
    }

    /// Queues `ERROR_REPLY(request_id, code)` without closing.
    pub(super) fn reply_error(
        &mut self,
        slot: usize,
        request_id: u32,
        code: ErrorCode,
        message: &str,
    ) {
        let frame = Frame::ErrorReply(ErrorReply {
            code: code as u16,
            message: message.to_owned(),
        });
        self.send(slot, request_id, &frame);
    }

    fn on_hello(&mut self, slot: usize, request_id: u32, version: u16) {
        if version != VERSION {
            self.fail(
                slot,
                request_id,
                ErrorCode::UnsupportedVersion,
                Reason::ProtocolError,
            );
            return;
        }
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.state = State::AwaitAuth;
        }
        let welcome = Frame::Welcome(Welcome {
            version: VERSION,
            max_frame: self.core.config.max_frame,
            heartbeat_secs: self.core.config.heartbeat_secs,
            node: self.core.router.local().to_owned(),
        });
        self.send(slot, request_id, &welcome);
    }

    /// Hands a password job to the auth workers; the answer comes back as `AuthDone`.
    fn start_auth(&mut self, slot: usize, request_id: u32, job: Job) {
        let Some(to) = self.conn_ref(slot) else {
            return;
        };
        match self.core.auth.try_send(AuthRequest {
            to,
            request_id,
            job,
        }) {
            Ok(()) => {
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.state = State::Authenticating;
                }
            }
            Err(TrySendError::Full(_)) => {
                ShardMetrics::add(&self.metrics().auth_throttled, 1);
                self.reply_error(
                    slot,
                    request_id,
                    ErrorCode::LoginThrottled,
                    &format!(
                        "the server is busy checking passwords; retry in a moment {}",
                        courier_protocol::retry_hint(1)
                    ),
                )
            }
            Err(TrySendError::Disconnected(_)) => self.reply_error(
                slot,
                request_id,
                ErrorCode::Internal,
                "the server is shutting down",
            ),
        }
    }

    /// The auth workers answered for `to`.
    pub(super) fn on_auth_done(
        &mut self,
        to: ConnRef,
        request_id: u32,
        result: Result<Authed, AuthError>,
    ) {
        let Some(slot) = self.local_slot(to) else {
            return;
        };
        if self
            .conns
            .get(slot)
            .is_none_or(|c| c.state != State::Authenticating)
        {
            return;
        }
        match result {
            Ok(authed) => self.finish_auth(slot, request_id, authed),
            Err(e) => self.auth_failed(slot, request_id, e),
        }
    }

    fn auth_failed(&mut self, slot: usize, request_id: u32, e: AuthError) {
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.state = State::AwaitAuth;
        }
        if matches!(e, AuthError::Throttled { .. }) {
            ShardMetrics::add(&self.metrics().auth_throttled, 1);
        }
        if e.is_internal() {
            // The detail (a RocksDB message, a path, free bytes) is for the log only; the
            // client gets the code and a sentence, and the request id ties the two together.
            tracing::error!(
                shard = self.id,
                slot,
                request_id,
                error = %e,
                "authentication failed on the server side; answered INTERNAL"
            );
            return self.reply_error(slot, request_id, ErrorCode::Internal, INTERNAL_MESSAGE);
        }
        self.reply_error(slot, request_id, e.code(), &e.to_string());
    }

    /// Sends `REDIRECT` (request id 0) and closes, if there is somewhere to redirect to.
    /// Returns whether it did.
    fn redirect(&mut self, slot: usize, to: Option<Redirect>) -> bool {
        let Some(to) = to else {
            return false;
        };
        self.send(slot, 0, &Frame::Redirect(to));
        self.close_soon(slot, Reason::Redirected);
        true
    }

    /// A device proved who it is: register it as online here. (It is on its home node: the
    /// request that authenticated it was redirected otherwise.)
    fn finish_auth(&mut self, slot: usize, request_id: u32, authed: Authed) {
        let now = self.now_secs();
        let Some(me) = self.conn_ref(slot) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.state = State::Authed;
        conn.user = authed.user;
        conn.device = authed.device;
        conn.digest = authed.digest;
        conn.last_frame = now;
        ShardMetrics::add(&self.metrics().authenticated, 1);
        if let Some(seq) = self.core.directory.register(authed.user, me) {
            self.presence_changed(seq, authed.user, true, crate::clock::wall_us());
        }
        for &old in &authed.replaced {
            self.revoke_token(authed.user, old, me);
        }
        self.push_connected(&authed);
        let ok = AuthOk {
            user: authed.user,
            device: authed.device,
            token: Bytes::copy_from_slice(&authed.token),
            handle: authed.handle,
            watermark: self.core.chat.watermark(),
        };
        self.send(slot, request_id, &Frame::AuthOk(ok));
    }

    fn on_authed_frame(&mut self, slot: usize, request_id: u32, frame: Frame) {
        let Some(conn) = self.conns.get(slot) else {
            return;
        };
        let (user, device, digest) = (conn.user, conn.device, conn.digest);
        let Some(me) = self.conn_ref(slot) else {
            return;
        };
        match frame {
            // A device that logs out must not keep getting pushes: its registrations go
            // first, so a failure leaves it logged in (INTERNAL; LOGOUT again), never logged
            // out and still notified.
            Frame::Logout(_) => match self
                .core
                .chat
                .pushers
                .forget_device(user, device)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    self.core
                        .accounts
                        .logout(user, &digest)
                        .map_err(|e| e.to_string())
                }) {
                Ok(()) => {
                    self.send(slot, request_id, &Frame::Done(Done {}));
                    self.close_soon(slot, Reason::Logout);
                    // Other connections that resumed with this token go too.
                    self.revoke_token(user, digest, me);
                }
                Err(e) => self.internal(slot, request_id, &e),
            },
            Frame::LogoutAll(_) => match self
                .core
                .chat
                .pushers
                .forget_user(user)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    self.core
                        .accounts
                        .logout_all(user)
                        .map_err(|e| e.to_string())
                }) {
                Ok(_) => {
                    self.send(slot, request_id, &Frame::Done(Done {}));
                    self.close_soon(slot, Reason::Logout);
                    let mut others = std::mem::take(&mut self.refs);
                    others.clear();
                    self.core.directory.devices_into(user, &mut others);
                    for &other in others.iter().filter(|&&r| r != me) {
                        self.kick(other, ErrorCode::SessionRevoked);
                    }
                    self.refs = others;
                }
                Err(e) => self.internal(slot, request_id, &e),
            },
            Frame::AdminStats(_) => {
                // Grants are read at each admin request (one point read; they are rare), so
                // `courier admin grant`/`revoke` takes effect without a new login.
                match self.core.accounts.is_admin(user) {
                    Ok(true) => {}
                    Ok(false) => {
                        return self.reply_error(
                            slot,
                            request_id,
                            ErrorCode::Forbidden,
                            "administration is for accounts granted admin rights (`courier admin grant`)",
                        )
                    }
                    Err(e) => return self.internal(slot, request_id, &e),
                }
                let mut entries: Vec<Stat> = self
                    .core
                    .metrics
                    .totals()
                    .into_iter()
                    .map(|(name, value)| Stat { name, value })
                    .collect();
                entries.push(Stat {
                    name: "online_users".into(),
                    value: self.core.directory.online_users() as u64,
                });
                self.send(slot, request_id, &Frame::Stats(Stats { entries }));
            }
            Frame::RegisterPush(f) => {
                let result = self.core.chat.pushers.register(user, device, f);
                self.answer_push(slot, request_id, result)
            }
            Frame::UnregisterPush(f) => {
                let result = self
                    .core
                    .chat
                    .pushers
                    .unregister(user, &f.app_id, &f.pushkey);
                self.answer_push(slot, request_id, result)
            }
            Frame::PresenceQuery(q) => self.presence_query(slot, request_id, user, &q.users),
            Frame::PresenceSubscribe(s) => {
                self.presence_subscribe(slot, request_id, user, &s.users)
            }
            frame if frame.code() >= FIRST_SERVER_CODE => {
                self.fail(slot, 0, ErrorCode::UnknownFrame, Reason::ProtocolError)
            }
            frame => {
                let caller = Caller {
                    user,
                    device,
                    conn: me,
                    checked: UsersChecked::No,
                };
                self.chat_request(slot, caller, request_id, frame);
            }
        }
    }

    /// Runs a chat request on this node: on the read workers, this shard's engine, or the
    /// engine of the shard that owns it.
    pub(super) fn run_here(&mut self, slot: usize, caller: Caller, request_id: u32, frame: Frame) {
        self.run_here_with(slot, caller, request_id, frame, Vec::new())
    }

    /// [`run_here`](Self::run_here) with the handles this node gathered of users of other
    /// nodes that the request names (`Engine::handle_with`).
    pub(super) fn run_here_with(
        &mut self,
        slot: usize,
        caller: Caller,
        request_id: u32,
        frame: Frame,
        handles: Vec<UserInfo>,
    ) {
        if Engine::is_read(&frame) {
            self.start_read(slot, caller, request_id, frame);
            return;
        }
        match Engine::shard_for(&self.core.chat, &caller, &frame) {
            Some(s) if s == self.id => self.engine.handle_with(caller, request_id, frame, handles),
            Some(s) if (s as usize) < self.core.mailboxes.len() => {
                self.outbox.push(
                    s,
                    ShardMsg::Request {
                        caller,
                        request_id,
                        frame,
                        handles,
                    },
                );
                if self.outbox.congested(s) {
                    self.pause_reads(slot, s);
                }
            }
            _ => self.reply_error(
                slot,
                request_id,
                ErrorCode::InvalidArgument,
                "this request is not supported by this server",
            ),
        }
    }

    /// Answers REGISTER_PUSH / UNREGISTER_PUSH: DONE, the request's error, or INTERNAL.
    fn answer_push(&mut self, slot: usize, request_id: u32, result: Result<(), push::Error>) {
        match result {
            Ok(()) => self.send(slot, request_id, &Frame::Done(Done {})),
            Err(e) if e.is_internal() => self.internal(slot, request_id, &e),
            Err(e) => self.reply_error(slot, request_id, e.code(), &e.to_string()),
        }
    }

    /// A device of `authed.user` authenticated: a LOGIN that replaced the device's token
    /// drops its push registrations (they went with the token), and whatever notification
    /// is pending for the user is cancelled (the device syncs). Failures are logged: the
    /// login itself succeeded.
    fn push_connected(&mut self, authed: &Authed) {
        if !authed.replaced.is_empty() {
            if let Err(e) = self
                .core
                .chat
                .pushers
                .forget_device(authed.user, authed.device)
            {
                tracing::error!(shard = self.id, user = authed.user, error = %e, "cannot drop the push registrations of a replaced token");
            }
        }
        if let Some(gate) = self.core.chat.push() {
            if let Err(e) = gate.connected(authed.user) {
                tracing::warn!(shard = self.id, user = authed.user, error = %e, "cannot cancel a pending push notification");
            }
        }
    }

    /// Hands a read request to the read workers; the answer comes back as `ReadDone`.
    fn start_read(&mut self, slot: usize, caller: Caller, request_id: u32, frame: Frame) {
        let req = ReadRequest {
            caller,
            request_id,
            frame,
        };
        match self.core.reads.submit(req) {
            Ok(()) => {}
            Err(Refused::Full) => self.reply_error(
                slot,
                request_id,
                ErrorCode::RateLimited,
                "the server has too many reads waiting; retry in a moment",
            ),
            Err(Refused::Stopped) => self.reply_error(
                slot,
                request_id,
                ErrorCode::Internal,
                "the server is shutting down",
            ),
        }
    }

    /// Answers INTERNAL with a generic sentence and logs the detail under the request id.
    pub(super) fn internal(&mut self, slot: usize, request_id: u32, e: &dyn std::fmt::Display) {
        tracing::error!(shard = self.id, slot, request_id, error = %e, "request failed on the server side; answered INTERNAL");
        self.reply_error(slot, request_id, ErrorCode::Internal, INTERNAL_MESSAGE);
    }

    /// Closes with `SESSION_REVOKED` every connection of `user` but `except`, on any shard,
    /// that authenticated with the token `digest`.
    fn revoke_token(&mut self, user: u64, digest: TokenDigest, except: ConnRef) {
        let mut others = std::mem::take(&mut self.refs);
        others.clear();
        self.core.directory.devices_into(user, &mut others);
        for &to in others.iter().filter(|&&r| r != except) {
            if to.shard == self.id {
                self.revoke_local(to, digest);
            } else {
                self.outbox.push(to.shard, ShardMsg::Revoke { to, digest });
            }
        }
        self.refs = others;
    }

    /// [`revoke_token`](Self::revoke_token) for one connection of this shard.
    pub(super) fn revoke_local(&mut self, to: ConnRef, digest: TokenDigest) {
        let Some(slot) = self.local_slot(to) else {
            return;
        };
        if self.conns.get(slot).is_some_and(|c| c.digest == digest) {
            self.fail(slot, 0, ErrorCode::SessionRevoked, Reason::SessionRevoked);
        }
    }

    /// `ERROR_REPLY(0, code)` and close, for a connection on any shard.
    pub(super) fn kick(&mut self, to: ConnRef, code: ErrorCode) {
        if to.shard != self.id {
            self.outbox.push(to.shard, ShardMsg::Kick { to, code });
        } else if let Some(slot) = self.local_slot(to) {
            self.fail(slot, 0, code, reason_for(code));
        }
    }
}

/// The `REDIRECT` to answer instead of serving a user whose home is `home`: it names the
/// node's key (empty on a plaintext cluster), which the client pins for the new connection.
fn redirect_to(router: &Router, home: Home<'_>) -> Option<Redirect> {
    match home {
        Home::Local => None,
        Home::Remote { node, addr } => Some(Redirect {
            node: node.to_owned(),
            addr: addr.to_owned(),
            key: router
                .key_of(node)
                .map_or(Bytes::new(), |k| Bytes::copy_from_slice(k.as_bytes())),
        }),
    }
}

/// The disconnect counter for a close announced with `code`.
pub(super) fn reason_for(code: ErrorCode) -> Reason {
    match code {
        ErrorCode::SessionRevoked => Reason::SessionRevoked,
        ErrorCode::ShuttingDown => Reason::ShuttingDown,
        ErrorCode::SlowConsumer => Reason::SlowConsumer,
        ErrorCode::HeartbeatTimeout => Reason::HeartbeatTimeout,
        ErrorCode::HandshakeTimeout => Reason::HandshakeTimeout,
        ErrorCode::ServerFull => Reason::ServerFull,
        _ => Reason::ProtocolError,
    }
}
