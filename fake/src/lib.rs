//! One fake Courier server, in process, over loopback TCP, for tests that must not need the
//! real one: the client library's tests and the loadgen's (`loadgen/tests/against_fake.rs`).
//! It is a dev-dependency only; nothing here ships in the server or in the client library.
//!
//! It speaks protocol v1 with just enough state: accounts, tokens derived from user ids,
//! threads (direct and group, with members), messages, and the open connections. One thread
//! per connection and one lock for everything: correct and slow, which is all a test needs.
//! Every write happens under that lock, so a push never interleaves with a reply.
//!
//! A test steers it two ways:
//! - [`Behaviour`]: knobs a test flips during a run (refuse HELLO, redirect, ignore PINGs, ...)
//!   and hooks to store, push or cut connections ([`FakeServer::inject`],
//!   [`FakeServer::drop_connections`], ...).
//! - [`Faults`]: misbehaviour injected every n-th SEND, for the loadgen's verifier to catch.
//!
//! Like the real server it can speak the encrypted transport ([`FakeServer::encrypted`]): the
//! Noise handshake with its key, then records; the clients get encryption from their config.
//!
//! Threads a test names by hand (thread 1 in an [`inject`](FakeServer::inject), a SEND to
//! thread 7) were never opened and have no member list: anyone may send to them, every
//! connection sees them in SYNC, and SEND pushes them to nobody. Threads opened with
//! OPEN_DIRECT or CREATE_GROUP get ids from 1 000 000 up, so the two never collide, and have
//! members: only members may send, SEND pushes to the members' other connections, and SYNC
//! shows them to members only.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use courier_protocol::noise::{self, Handshake, Keypair, PublicKey, Transport, MAX_RECORD_LEN};
use courier_protocol::*;
use parking_lot::Mutex;

/// Misbehaviour to inject, each "every n-th SEND" (0 = never).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Do not push every n-th message (it is stored: SYNC finds it).
    pub skip_push_every: u64,
    /// Push every n-th message twice on the same connection.
    pub duplicate_push_every: u64,
    /// Answer SENT for every n-th message but never store or push it.
    pub forget_every: u64,
    /// Answer every n-th SEND with a message from long ago (as a server does for a retry of
    /// an old client id), storing and pushing nothing.
    pub stale_ack_every: u64,
}

/// How message ids are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageIds {
    /// 1001, 1002, ...: a test can predict the next one.
    #[default]
    Sequential,
    /// Microseconds since the Unix epoch, strictly increasing, as the real server gives them
    /// (the loadgen's SYNC starts from the time its run started).
    Clock,
}

/// How a fake server is set up when it starts.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Announced in WELCOME.
    pub heartbeat_secs: u16,
    pub message_ids: MessageIds,
    pub faults: Faults,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat_secs: 30,
            message_ids: MessageIds::Sequential,
            faults: Faults::default(),
        }
    }
}

/// Knobs a test sets before or during a run.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// Answer LOGIN/RESUME with REDIRECT to this address, then close.
    pub redirect_to: Option<String>,
    /// The key that REDIRECT names (empty when `None`, as on a plaintext cluster).
    pub redirect_key: Option<PublicKey>,
    /// Drop the connection instead of answering the next SEND (after storing it).
    pub drop_on_next_send: bool,
    /// Never answer CONTACT_LIST.
    pub ignore_contact_list: bool,
    /// Answer HELLO with this error, then close.
    pub refuse_hello: Option<ErrorCode>,
    /// The version WELCOME announces instead of [`VERSION`].
    pub welcome_version: Option<u16>,
    /// Never answer PING: a server that hangs with the connection open.
    pub ignore_pings: bool,
    /// On RESUME, store a message with this text and push it right behind AUTH_OK, in the
    /// same write, as a message sent during the resume would be.
    pub push_on_resume: Option<String>,
    /// Page size the server imposes on SYNC.
    pub sync_page: Option<usize>,
    /// On the next SYNC, after its page is computed, store this many messages (thread 1, from
    /// user 99) and push them ahead of the reply, as messages sent while the sync's walk runs
    /// would be. Once.
    pub push_during_sync: usize,
}

/// The token the fake hands out and accepts for `user`: the id, big-endian, then zeros. Any
/// fake accepts it, so a test can provision users without registering them, and a user
/// registered first on two fakes gets the same token from both.
pub fn token_for(user: u64) -> Bytes {
    let mut t = user.to_be_bytes().to_vec();
    t.resize(32, 0);
    t.into()
}

/// The user a token names, if it is one [`token_for`] made.
fn user_of_token(token: &[u8]) -> Option<u64> {
    if token.len() != 32 || token[8..].iter().any(|&b| b != 0) {
        return None;
    }
    let user = u64::from_be_bytes(token[..8].try_into().ok()?);
    (user != 0).then_some(user)
}

/// The handle of a user the fake did not register (a provisioned one): `load{id}`, as
/// `courier admin provision` names them.
fn provisioned_handle(user: u64) -> String {
    format!("load{user}")
}

/// One authenticated connection.
struct Online {
    conn: u64,
    user: u64,
    writer: Writer,
}

/// A connection's write side: the socket, and the record layer when it is encrypted (shared
/// with the connection's reader, which opens records with it).
struct Writer {
    stream: TcpStream,
    transport: Option<Arc<Mutex<Transport>>>,
}

impl Writer {
    /// Writes encoded frames, sealed as one record when the connection is encrypted.
    fn write_all(&mut self, frames: &[u8]) -> std::io::Result<()> {
        match &self.transport {
            None => self.stream.write_all(frames),
            Some(transport) => {
                let mut sealed = BytesMut::new();
                transport
                    .lock()
                    .seal(frames, &mut sealed)
                    .map_err(std::io::Error::other)?;
                self.stream.write_all(&sealed)
            }
        }
    }

    fn try_clone(&self) -> std::io::Result<Writer> {
        Ok(Writer {
            stream: self.stream.try_clone()?,
            transport: self.transport.clone(),
        })
    }

    fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        self.stream.shutdown(how)
    }
}

#[derive(Default)]
struct State {
    /// handle → (user id, password).
    accounts: HashMap<String, (u64, String)>,
    /// user id → handle, for registered users.
    handles: HashMap<u64, String>,
    next_user: u64,
    /// Opened threads → members.
    threads: HashMap<u64, Vec<u64>>,
    /// (lower user, higher user) → direct thread.
    direct: HashMap<(u64, u64), u64>,
    next_thread: u64,
    /// Every stored message, in storage order.
    messages: Vec<Message>,
    /// (thread, sender, client message id) → message id, for SENDs with a client id: a retry
    /// is answered with the message it stored first.
    by_client_id: HashMap<(u64, u64, u64), u64>,
    /// The newest stored message id, 0 before any.
    newest: u64,
    /// The last message id given (stored or forgotten).
    last_message: u64,
    sends: u64,
    online: Vec<Online>,
    next_conn: u64,
    pings: u32,
    resumes: u32,
    /// Encrypted handshakes finished: (XX, IK).
    handshakes: (u32, u32),
    behaviour: Behaviour,
}

struct Shared {
    state: Mutex<State>,
    options: Options,
    stop: AtomicBool,
    /// The server's static key when it serves the encrypted transport.
    key: Option<Keypair>,
}

/// A running fake server; it stops accepting and cuts its connections when dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    /// The public key clients pin, when it is encrypted ([`FakeServer::encrypted`]).
    pub key: Option<PublicKey>,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// A fake with [`Options::default`].
    pub fn start() -> FakeServer {
        Self::with_options(Options::default())
    }

    /// A fake that announces `heartbeat_secs` in WELCOME.
    pub fn with_heartbeat(heartbeat_secs: u16) -> FakeServer {
        Self::with_options(Options {
            heartbeat_secs,
            ..Options::default()
        })
    }

    /// A fake that serves the encrypted transport with a fresh key ([`FakeServer::key`]), as
    /// the real server does by default.
    pub fn encrypted() -> FakeServer {
        let key = Keypair::generate().expect("the system's random number generator");
        Self::with_options_and_key(Options::default(), Some(key))
    }

    /// Panics if it cannot listen on loopback (a test cannot go on without it).
    pub fn with_options(options: Options) -> FakeServer {
        Self::with_options_and_key(options, None)
    }

    /// A fake with `options`, encrypted with `key` if given.
    pub fn with_options_and_key(options: Options, key: Option<Keypair>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen on 127.0.0.1");
        let addr = listener.local_addr().expect("the listener's address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_user: 1_000_000,
                next_thread: 1_000_000,
                last_message: 1000,
                ..State::default()
            }),
            options,
            stop: AtomicBool::new(false),
            key: key.clone(),
        });
        let accepting = shared.clone();
        let accept = std::thread::Builder::new()
            .name("fake-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if accepting.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = accepting.clone();
                    let _ = std::thread::Builder::new()
                        .name("fake-conn".into())
                        .stack_size(128 * 1024)
                        .spawn(move || shared.serve(stream));
                }
            })
            .expect("start the accept thread");
        FakeServer {
            addr,
            key: key.map(|k| k.public()),
            shared,
            accept: Some(accept),
        }
    }

    /// The process serving: this one.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    pub fn behave(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.shared.state.lock().behaviour);
    }

    /// Stores a message from `sender` and pushes it to every authenticated connection.
    pub fn inject(&self, thread: u64, sender: u64, text: &str) -> Message {
        let mut st = self.shared.state.lock();
        let body = Bytes::copy_from_slice(text.as_bytes());
        let message = self
            .shared
            .store(&mut st, thread, sender, 0, MessageKind::Text, body);
        let push = Frame::MessagePush(MessagePush {
            message: message.clone(),
            reply_to: 0,
        });
        for online in &mut st.online {
            let _ = write_frame(&mut online.writer, 0, &push);
        }
        message
    }

    /// Stores a message without pushing it (it was sent while the client was away).
    pub fn store_only(&self, thread: u64, sender: u64, text: &str) -> Message {
        let mut st = self.shared.state.lock();
        let body = Bytes::copy_from_slice(text.as_bytes());
        self.shared
            .store(&mut st, thread, sender, 0, MessageKind::Text, body)
    }

    /// Sends any frame, with request id 0, to every authenticated connection.
    pub fn push_all(&self, frame: Frame) {
        for online in &mut self.shared.state.lock().online {
            let _ = write_frame(&mut online.writer, 0, &frame);
        }
    }

    /// Cuts every authenticated connection, as a crash or network failure would.
    pub fn drop_connections(&self) {
        for online in self.shared.state.lock().online.drain(..) {
            let _ = online.writer.shutdown(Shutdown::Both);
        }
    }

    /// Every stored message, in storage order.
    pub fn messages(&self) -> Vec<Message> {
        self.shared.state.lock().messages.clone()
    }

    /// PINGs answered.
    pub fn pings(&self) -> u32 {
        self.shared.state.lock().pings
    }

    /// RESUMEs received.
    pub fn resumes(&self) -> u32 {
        self.shared.state.lock().resumes
    }

    /// Encrypted handshakes finished so far: (XX, IK).
    pub fn handshakes(&self) -> (u32, u32) {
        self.shared.state.lock().handshakes
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which sees `stop` and ends.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        self.drop_connections();
    }
}

/// One connection as its serving thread sees it.
struct Conn {
    id: u64,
    writer: Writer,
    user: Option<u64>,
}

/// Runs the server side of the Noise handshake on `stream`; the record layer, and the bytes
/// that came after the last handshake message (the first records). `None`: the handshake
/// failed (its answer, a REJECT perhaps, was written) or the peer went away.
fn handshake(
    key: &Keypair,
    stream: &mut TcpStream,
) -> Option<(Transport, noise::Pattern, BytesMut)> {
    let mut handshake = Handshake::responder(key);
    let mut input = BytesMut::new();
    let mut chunk = [0u8; 1024];
    loop {
        let mut answer = BytesMut::new();
        let done = handshake.handle(&mut input, &mut answer);
        if !answer.is_empty() && stream.write_all(&answer).is_err() {
            return None;
        }
        match done {
            Ok(Some(done)) => return Some((done.transport, done.pattern, input)),
            Ok(None) => {}
            Err(_) => return None,
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => input.extend_from_slice(&chunk[..n]),
        }
    }
}

impl Shared {
    fn serve(&self, mut stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let (transport, mut records) = match &self.key {
            None => (None, BytesMut::new()),
            Some(key) => match handshake(key, &mut stream) {
                Some((transport, pattern, rest)) => {
                    let mut st = self.state.lock();
                    match pattern {
                        noise::Pattern::Xx => st.handshakes.0 += 1,
                        noise::Pattern::Ik => st.handshakes.1 += 1,
                    }
                    (Some(Arc::new(Mutex::new(transport))), rest)
                }
                None => return,
            },
        };
        let Ok(writer) = stream.try_clone() else {
            return;
        };
        let writer = Writer {
            stream: writer,
            transport: transport.clone(),
        };
        let id = {
            let mut st = self.state.lock();
            st.next_conn += 1;
            st.next_conn
        };
        let mut conn = Conn {
            id,
            writer,
            user: None,
        };
        let mut reader = stream;
        let decoder = Decoder::new(MAX_FRAME_LEN);
        let mut buf = BytesMut::new();
        let mut chunk = [0u8; 16 * 1024];
        'conn: loop {
            if let Some(t) = &transport {
                if t.lock()
                    .open_all(&mut records, MAX_RECORD_LEN, &mut buf)
                    .is_err()
                {
                    break;
                }
            }
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(env)) => {
                        if !self.handle(&mut conn, env) {
                            break 'conn;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => break 'conn,
                }
            }
            match reader.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) if transport.is_some() => records.extend_from_slice(&chunk[..n]),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = reader.shutdown(Shutdown::Both);
        self.state.lock().online.retain(|o| o.conn != id);
    }

    /// Answers one request; false to close the connection.
    fn handle(&self, conn: &mut Conn, env: Envelope) -> bool {
        let rid = env.request_id;
        let mut st = self.state.lock();
        let reply: Frame = match env.frame {
            Frame::Hello(_) => {
                if let Some(code) = st.behaviour.refuse_hello {
                    let _ = write_frame(&mut conn.writer, rid, &error(code));
                    return false;
                }
                Welcome {
                    version: st.behaviour.welcome_version.unwrap_or(VERSION),
                    max_frame: 65_536,
                    heartbeat_secs: self.options.heartbeat_secs,
                    node: "fake".into(),
                }
                .into()
            }
            Frame::Ping(_) if st.behaviour.ignore_pings => return true,
            Frame::Ping(p) => {
                st.pings += 1;
                Pong { nonce: p.nonce }.into()
            }
            Frame::Register(r) => {
                if st.accounts.contains_key(&r.handle) {
                    error(ErrorCode::HandleTaken)
                } else {
                    st.next_user += 1;
                    let user = st.next_user;
                    st.accounts.insert(r.handle.clone(), (user, r.password));
                    st.handles.insert(user, r.handle);
                    authenticate(&mut st, conn, user)
                }
            }
            Frame::Login(l) => {
                if let Some(to) = st.behaviour.redirect_to.clone() {
                    return redirect(&mut conn.writer, &to, st.behaviour.redirect_key);
                }
                match st.accounts.get(&l.handle).cloned() {
                    Some((user, password)) if password == l.password => {
                        authenticate(&mut st, conn, user)
                    }
                    _ => error(ErrorCode::BadCredentials),
                }
            }
            Frame::Resume(r) => {
                st.resumes += 1;
                if let Some(to) = st.behaviour.redirect_to.clone() {
                    return redirect(&mut conn.writer, &to, st.behaviour.redirect_key);
                }
                let Some(user) = user_of_token(&r.token) else {
                    return write_frame(&mut conn.writer, rid, &error(ErrorCode::InvalidToken))
                        .is_ok();
                };
                let ok = authenticate(&mut st, conn, user);
                if let Some(text) = st.behaviour.push_on_resume.clone() {
                    let body = Bytes::copy_from_slice(text.as_bytes());
                    let message = self.store(&mut st, 1, 99, 0, MessageKind::Text, body);
                    let mut buf = BytesMut::new();
                    encode(rid, &ok, &mut buf);
                    encode(
                        0,
                        &MessagePush {
                            message,
                            reply_to: 0,
                        }
                        .into(),
                        &mut buf,
                    );
                    return conn.writer.write_all(&buf).is_ok();
                }
                ok
            }
            _ if conn.user.is_none() => {
                // As the real server does: the reason with request id 0, then the close.
                let _ = write_frame(&mut conn.writer, 0, &error(ErrorCode::NotAuthenticated));
                return false;
            }
            Frame::Send(s) => {
                let me = conn.user.unwrap_or_default();
                if st.threads.get(&s.thread).is_some_and(|m| !m.contains(&me)) {
                    error(ErrorCode::NotMember)
                } else {
                    let message = self.send(&mut st, conn.id, me, s);
                    if std::mem::take(&mut st.behaviour.drop_on_next_send) {
                        return false;
                    }
                    message.into()
                }
            }
            Frame::Sync(s) => {
                let batch = sync(&st, conn.user.unwrap_or_default(), &s);
                for i in 0..std::mem::take(&mut st.behaviour.push_during_sync) {
                    let body = Bytes::from(format!("during sync {i}"));
                    let message = self.store(&mut st, 1, 99, 0, MessageKind::Text, body);
                    let push = MessagePush {
                        message,
                        reply_to: 0,
                    };
                    if write_frame(&mut conn.writer, 0, &push.into()).is_err() {
                        return false;
                    }
                }
                batch.into()
            }
            Frame::History(h) => {
                let mut messages: Vec<Message> = st
                    .messages
                    .iter()
                    .filter(|m| m.thread == h.thread)
                    .cloned()
                    .collect();
                messages.reverse();
                messages.truncate(h.limit as usize);
                Messages {
                    thread: h.thread,
                    messages,
                    more: false,
                    meta: vec![],
                }
                .into()
            }
            Frame::OpenDirect(o) => {
                let me = conn.user.unwrap_or_default();
                let pair = (me.min(o.peer), me.max(o.peer));
                let id = match st.direct.get(&pair) {
                    Some(&id) => id,
                    None => {
                        st.next_thread += 1;
                        let id = st.next_thread;
                        st.direct.insert(pair, id);
                        st.threads.insert(id, vec![pair.0, pair.1]);
                        id
                    }
                };
                thread_info(id, &st.threads[&id], ThreadKind::Direct)
            }
            Frame::CreateGroup(g) => {
                let me = conn.user.unwrap_or_default();
                st.next_thread += 1;
                let id = st.next_thread;
                let mut members = vec![me];
                members.extend(g.members.iter().copied().filter(|&m| m != me));
                st.threads.insert(id, members);
                let reply = thread_info(id, &st.threads[&id], ThreadKind::Group);
                if write_frame(&mut conn.writer, rid, &reply).is_err() {
                    return false;
                }
                let event = SystemEvent {
                    event: SystemEventKind::Created,
                    actor: me,
                    subject: 0,
                    text: g.name,
                    users: Vec::new(),
                    ..SystemEvent::default()
                };
                let mut body = BytesMut::new();
                wire::Wire::put(&event, &mut body);
                let message = self.store(&mut st, id, me, 0, MessageKind::System, body.freeze());
                push_to_members(&mut st, &message, conn.id, false);
                return true;
            }
            Frame::AddMembers(a) => match st.threads.get_mut(&a.thread) {
                Some(members) => {
                    members.extend(a.members.iter().copied());
                    Done {}.into()
                }
                None => error(ErrorCode::UnknownThread),
            },
            Frame::LookupUser(l) => match st.accounts.get(&l.handle) {
                Some((id, _)) => User {
                    user: UserInfo {
                        id: *id,
                        handle: l.handle,
                    },
                }
                .into(),
                None => error(ErrorCode::UnknownUser),
            },
            Frame::ContactList(_) if st.behaviour.ignore_contact_list => return true,
            // Push registrations are accepted and forgotten: the fake has no gateway.
            Frame::Receipt(_)
            | Frame::ContactAdd(_)
            | Frame::PresenceSubscribe(_)
            | Frame::RegisterPush(_)
            | Frame::UnregisterPush(_) => Done {}.into(),
            Frame::Typing(_) => return true,
            _ => error(ErrorCode::InvalidArgument),
        };
        write_frame(&mut conn.writer, rid, &reply).is_ok()
    }

    /// SEND from `me` on connection `conn`, with the [`Faults`] applied: the SENT to answer.
    fn send(&self, st: &mut State, conn: u64, me: u64, s: Send) -> Sent {
        let faults = self.options.faults;
        st.sends += 1;
        let n = st.sends;
        let every = |k: u64| k > 0 && n % k == 0;
        let key = (s.thread, me, s.client_msg_id);
        let retry = (s.client_msg_id != 0)
            .then(|| st.by_client_id.get(&key).copied())
            .flatten();
        let message = if let Some(id) = retry {
            id
        } else if every(faults.stale_ack_every) {
            1
        } else if every(faults.forget_every) {
            self.next_message_id(st)
        } else {
            let text = s.kind == MessageKind::Text;
            let message = self.store(st, s.thread, me, s.client_msg_id, s.kind, s.body);
            if s.client_msg_id != 0 {
                st.by_client_id.insert(key, message.id);
            }
            if !(text && every(faults.skip_push_every)) {
                let twice = text && every(faults.duplicate_push_every);
                push_to_members(st, &message, conn, twice);
            }
            message.id
        };
        Sent {
            thread: s.thread,
            message,
            client_msg_id: s.client_msg_id,
        }
    }

    fn store(
        &self,
        st: &mut State,
        thread: u64,
        sender: u64,
        client_msg_id: u64,
        kind: MessageKind,
        body: Bytes,
    ) -> Message {
        let message = Message {
            thread,
            id: self.next_message_id(st),
            sender,
            client_msg_id,
            kind,
            recalled: false,
            body,
        };
        st.messages.push(message.clone());
        st.newest = message.id;
        message
    }

    fn next_message_id(&self, st: &mut State) -> u64 {
        let next = st.last_message + 1;
        st.last_message = match self.options.message_ids {
            MessageIds::Sequential => next,
            MessageIds::Clock => unix_micros().max(next),
        };
        st.last_message
    }
}

/// Marks `conn` as `user`'s and answers AUTH_OK.
fn authenticate(st: &mut State, conn: &mut Conn, user: u64) -> Frame {
    conn.user = Some(user);
    if let Ok(writer) = conn.writer.try_clone() {
        st.online.push(Online {
            conn: conn.id,
            user,
            writer,
        });
    }
    let handle = st
        .handles
        .get(&user)
        .cloned()
        .unwrap_or_else(|| provisioned_handle(user));
    AuthOk {
        user,
        device: 1,
        token: token_for(user),
        handle,
        // Like the real server: everything stored so far is below the login's watermark.
        watermark: st.newest,
    }
    .into()
}

/// Whether `user` may see `thread`: it was never opened (no member list) or they are a member.
fn visible(st: &State, thread: u64, user: u64) -> bool {
    st.threads
        .get(&thread)
        .is_none_or(|members| members.contains(&user))
}

/// Pushes `message` to every connection of its thread's members but the sender's own
/// (`from`); a thread never opened has no members to push to.
fn push_to_members(st: &mut State, message: &Message, from: u64, twice: bool) {
    let Some(members) = st.threads.get(&message.thread) else {
        return;
    };
    let push = Frame::MessagePush(MessagePush {
        message: message.clone(),
        reply_to: 0,
    });
    let mut buf = BytesMut::new();
    encode(0, &push, &mut buf);
    if twice {
        encode(0, &push, &mut buf);
    }
    let members = members.clone();
    for online in &mut st.online {
        if online.conn != from && members.contains(&online.user) {
            let _ = online.writer.write_all(&buf);
        }
    }
}

/// One SYNC page, in (thread, message) order, like the real server: the walk keeps the
/// watermark of its first page.
fn sync(st: &State, user: u64, s: &Sync) -> SyncBatch {
    let page = st.behaviour.sync_page.unwrap_or(s.limit as usize).max(1);
    let after = (s.after_thread, s.after_message);
    let mut pending: Vec<Message> = st
        .messages
        .iter()
        .filter(|m| m.id > s.since && (m.thread, m.id) > after && visible(st, m.thread, user))
        .cloned()
        .collect();
    pending.sort_by_key(|m| (m.thread, m.id));
    let more = pending.len() > page;
    pending.truncate(page);
    let (next_thread, next_message) = pending.last().map_or((0, 0), |m| (m.thread, m.id));
    let now = st.newest;
    let watermark = match s.watermark {
        0 => now,
        given => given.min(now),
    };
    let mut threads: Vec<u64> = pending.iter().map(|m| m.thread).collect();
    threads.dedup();
    let threads = threads
        .into_iter()
        .map(|id| Thread {
            id,
            ..Thread::default()
        })
        .collect();
    SyncBatch {
        threads,
        messages: pending,
        more,
        next_thread,
        next_message,
        watermark,
        deleted: Vec::new(),
        meta: vec![],
        // One node: no per-node watermarks, as from a real single node.
        vector: Default::default(),
    }
}

fn thread_info(id: u64, members: &[u64], kind: ThreadKind) -> Frame {
    let members = members
        .iter()
        .map(|&user| Member {
            user,
            ..Member::default()
        })
        .collect();
    ThreadInfo {
        thread: Thread {
            id,
            kind,
            members,
            ..Thread::default()
        },
    }
    .into()
}

/// REDIRECT with request id 0, a moment for it to arrive, then the close.
fn redirect(writer: &mut Writer, to: &str, key: Option<PublicKey>) -> bool {
    let _ = write_frame(
        writer,
        0,
        &Redirect {
            node: "other".into(),
            addr: to.into(),
            key: key.map_or(Bytes::new(), |k| Bytes::copy_from_slice(k.as_bytes())),
        }
        .into(),
    );
    std::thread::sleep(Duration::from_millis(20));
    false
}

fn error(code: ErrorCode) -> Frame {
    ErrorReply {
        code: code as u16,
        message: code.name().to_lowercase(),
    }
    .into()
}

fn write_frame(writer: &mut Writer, request_id: u32, frame: &Frame) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    encode(request_id, frame, &mut buf);
    writer.write_all(&buf)
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
