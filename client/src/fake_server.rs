//! A tiny in-process server that speaks protocol v1 over loopback TCP, for tests that must not
//! need the real server. It keeps just enough state: users, tokens, messages of any thread,
//! and the open connections so tests can push to them or cut them.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use courier_protocol::*;
use parking_lot::Mutex;

/// Knobs a test sets before or during a run.
#[derive(Default)]
pub struct Behaviour {
    /// Answer LOGIN/RESUME with REDIRECT to this address, then close.
    pub redirect_to: Option<String>,
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
}

#[derive(Default)]
struct State {
    users: HashMap<String, (u64, String)>,
    tokens: HashMap<Vec<u8>, (u64, String)>,
    messages: Vec<Message>,
    next_id: u64,
    conns: Vec<(u64, TcpStream)>,
    pings: u32,
    resumes: u32,
    behaviour: Behaviour,
}

/// A running fake server; it stops when the test process ends.
#[derive(Clone)]
pub struct FakeServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    heartbeat_secs: u16,
}

static CONN_IDS: AtomicU32 = AtomicU32::new(1);

impl FakeServer {
    pub fn start() -> FakeServer {
        Self::with_heartbeat(30)
    }

    pub fn with_heartbeat(heartbeat_secs: u16) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            next_id: 1000,
            ..State::default()
        }));
        let server = FakeServer {
            addr,
            state,
            heartbeat_secs,
        };
        let accepting = server.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let s = accepting.clone();
                thread::spawn(move || s.serve(stream));
            }
        });
        server
    }

    pub fn behave(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.state.lock().behaviour);
    }

    /// Stores a message from `sender` and pushes it to every authenticated connection.
    pub fn inject(&self, thread: u64, sender: u64, text: &str) -> Message {
        let mut st = self.state.lock();
        let message = store(
            &mut st,
            thread,
            sender,
            0,
            MessageKind::Text,
            Bytes::copy_from_slice(text.as_bytes()),
        );
        let frame = Frame::MessagePush(MessagePush {
            message: message.clone(),
        });
        for (_, conn) in &mut st.conns {
            let _ = write_frame(conn, 0, &frame);
        }
        message
    }

    /// Stores a message without pushing it (it was sent while the client was away).
    pub fn store_only(&self, thread: u64, sender: u64, text: &str) -> Message {
        let mut st = self.state.lock();
        store(
            &mut st,
            thread,
            sender,
            0,
            MessageKind::Text,
            Bytes::copy_from_slice(text.as_bytes()),
        )
    }

    /// Pushes any frame to every connection.
    pub fn push_all(&self, frame: Frame) {
        for (_, conn) in &mut self.state.lock().conns {
            let _ = write_frame(conn, 0, &frame);
        }
    }

    /// Cuts every open connection, as a crash or network failure would.
    pub fn drop_connections(&self) {
        for (_, conn) in self.state.lock().conns.drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    pub fn messages(&self) -> Vec<Message> {
        self.state.lock().messages.clone()
    }

    pub fn pings(&self) -> u32 {
        self.state.lock().pings
    }

    pub fn resumes(&self) -> u32 {
        self.state.lock().resumes
    }

    fn serve(&self, mut stream: TcpStream) {
        let conn_id = u64::from(CONN_IDS.fetch_add(1, Ordering::Relaxed));
        let decoder = Decoder::new(MAX_FRAME_LEN);
        let mut buf = BytesMut::new();
        let mut chunk = [0u8; 4096];
        let mut user: Option<u64> = None;
        loop {
            let n = match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Ok(Some(env)) = decoder.decode(&mut buf) {
                if !self.handle(conn_id, &mut stream, &mut user, env) {
                    let _ = stream.shutdown(Shutdown::Both);
                    self.state.lock().conns.retain(|(id, _)| *id != conn_id);
                    return;
                }
            }
        }
        self.state.lock().conns.retain(|(id, _)| *id != conn_id);
    }

    /// Answers one request; false to close the connection.
    fn handle(
        &self,
        conn_id: u64,
        stream: &mut TcpStream,
        user: &mut Option<u64>,
        env: Envelope,
    ) -> bool {
        let rid = env.request_id;
        let mut st = self.state.lock();
        let reply: Frame = match env.frame {
            Frame::Hello(_) if st.behaviour.refuse_hello.is_some() => {
                let code = st.behaviour.refuse_hello.unwrap_or(ErrorCode::Internal);
                let _ = write_frame(stream, rid, &error(code));
                return false;
            }
            Frame::Hello(_) => Welcome {
                version: st.behaviour.welcome_version.unwrap_or(VERSION),
                max_frame: 65536,
                heartbeat_secs: self.heartbeat_secs,
                node: "fake".into(),
            }
            .into(),
            Frame::Ping(_) if st.behaviour.ignore_pings => return true,
            Frame::Ping(p) => {
                st.pings += 1;
                Pong { nonce: p.nonce }.into()
            }
            Frame::Register(r) => {
                if st.users.contains_key(&r.handle) {
                    error(ErrorCode::HandleTaken)
                } else {
                    let id = st.users.len() as u64 + 1;
                    st.users.insert(r.handle.clone(), (id, r.password));
                    auth(&mut st, conn_id, stream, user, id, &r.handle)
                }
            }
            Frame::Login(l) => {
                if let Some(to) = st.behaviour.redirect_to.clone() {
                    return redirect(stream, &to);
                }
                match st.users.get(&l.handle).cloned() {
                    Some((id, pw)) if pw == l.password => {
                        auth(&mut st, conn_id, stream, user, id, &l.handle)
                    }
                    _ => error(ErrorCode::BadCredentials),
                }
            }
            Frame::Resume(r) => {
                st.resumes += 1;
                if let Some(to) = st.behaviour.redirect_to.clone() {
                    return redirect(stream, &to);
                }
                match st.tokens.get(r.token.as_ref()).cloned() {
                    Some((id, handle)) => {
                        let ok = auth(&mut st, conn_id, stream, user, id, &handle);
                        if let Some(text) = st.behaviour.push_on_resume.clone() {
                            let body = Bytes::copy_from_slice(text.as_bytes());
                            let message = store(&mut st, 1, 99, 0, MessageKind::Text, body);
                            let mut buf = BytesMut::new();
                            encode(rid, &ok, &mut buf);
                            encode(0, &MessagePush { message }.into(), &mut buf);
                            return stream.write_all(&buf).is_ok();
                        }
                        ok
                    }
                    None => error(ErrorCode::InvalidToken),
                }
            }
            _ if user.is_none() => {
                let _ = write_frame(stream, 0, &error(ErrorCode::NotAuthenticated));
                return false;
            }
            Frame::Send(s) => {
                let me = user.unwrap();
                let existing = st.messages.iter().find(|m| {
                    m.thread == s.thread && m.sender == me && m.client_msg_id == s.client_msg_id
                });
                let message = match existing {
                    Some(m) => m.clone(),
                    None => store(&mut st, s.thread, me, s.client_msg_id, s.kind, s.body),
                };
                if std::mem::take(&mut st.behaviour.drop_on_next_send) {
                    return false;
                }
                Sent {
                    thread: message.thread,
                    message: message.id,
                    client_msg_id: message.client_msg_id,
                }
                .into()
            }
            Frame::Sync(s) => {
                let page = st.behaviour.sync_page.unwrap_or(s.limit as usize).max(1);
                let after = (s.after_thread, s.after_message);
                let mut pending: Vec<Message> = st
                    .messages
                    .iter()
                    .filter(|m| m.id > s.since && (m.thread, m.id) > after)
                    .cloned()
                    .collect();
                pending.sort_by_key(|m| (m.thread, m.id));
                let more = pending.len() > page;
                pending.truncate(page);
                let (next_thread, next_message) =
                    pending.last().map_or((0, 0), |m| (m.thread, m.id));
                // Like the real server: one walk keeps the watermark of its first page.
                let now = st.messages.iter().map(|m| m.id).max().unwrap_or(0);
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
                }
                .into()
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
                }
                .into()
            }
            Frame::OpenDirect(o) => {
                let me = user.unwrap();
                let members = [me, o.peer]
                    .map(|u| Member {
                        user: u,
                        ..Member::default()
                    })
                    .to_vec();
                ThreadInfo {
                    thread: Thread {
                        id: 1,
                        kind: ThreadKind::Direct,
                        members,
                        ..Thread::default()
                    },
                }
                .into()
            }
            Frame::LookupUser(l) => match st.users.get(&l.handle) {
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
            Frame::Typing(_) => return true,
            _ => error(ErrorCode::InvalidArgument),
        };
        // Written under the lock so that pushes from `inject` never interleave with a reply.
        let ok = write_frame(stream, rid, &reply).is_ok();
        drop(st);
        ok
    }
}

fn auth(
    st: &mut State,
    conn_id: u64,
    stream: &TcpStream,
    user: &mut Option<u64>,
    id: u64,
    handle: &str,
) -> Frame {
    let token = format!("token-{id}").into_bytes();
    st.tokens.insert(token.clone(), (id, handle.to_string()));
    *user = Some(id);
    st.conns.push((conn_id, stream.try_clone().unwrap()));
    AuthOk {
        user: id,
        device: 1,
        token: token.into(),
        handle: handle.into(),
        // Like the real server: everything stored so far is below the login's watermark.
        watermark: st.messages.iter().map(|m| m.id).max().unwrap_or(0),
    }
    .into()
}

fn redirect(stream: &mut TcpStream, to: &str) -> bool {
    let _ = write_frame(
        stream,
        0,
        &Redirect {
            node: "other".into(),
            addr: to.into(),
        }
        .into(),
    );
    thread::sleep(Duration::from_millis(20));
    false
}

fn store(
    st: &mut State,
    thread: u64,
    sender: u64,
    client_msg_id: u64,
    kind: MessageKind,
    body: Bytes,
) -> Message {
    st.next_id += 1;
    let message = Message {
        thread,
        id: st.next_id,
        sender,
        client_msg_id,
        kind,
        recalled: false,
        body,
    };
    st.messages.push(message.clone());
    message
}

fn error(code: ErrorCode) -> Frame {
    ErrorReply {
        code: code as u16,
        message: code.name().to_lowercase(),
    }
    .into()
}

fn write_frame(stream: &mut TcpStream, rid: u32, frame: &Frame) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    encode(rid, frame, &mut buf);
    stream.write_all(&buf)
}
