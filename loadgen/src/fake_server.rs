//! A tiny in-process Courier server for testing the loadgen without the real one: HELLO,
//! RESUME/REGISTER, OPEN_DIRECT, CREATE_GROUP/ADD_MEMBERS, SEND (SENT, then MESSAGE_PUSH to the
//! other members' connections), SYNC, RECEIPT, contacts, presence, PING. One thread per
//! connection, one lock for everything: correct and slow, which is all a test needs.
//!
//! Faults can be injected ([`Faults`]) to prove the verifier notices them.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use courier_protocol::{self as proto, encode, Decoder, ErrorCode, Frame, Message, MessageKind};

use crate::users::{format_user, UserRecord};

/// Misbehaviour to inject, each "every n-th" (0 = never).
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

struct Thread {
    members: Vec<u64>,
    messages: Vec<Message>,
}

/// One online connection: (connection id, its writer).
type Online = (u64, Arc<Mutex<TcpStream>>);

#[derive(Default)]
struct State {
    next_user: u64,
    handles: HashMap<String, u64>,
    threads: HashMap<u64, Thread>,
    direct: HashMap<(u64, u64), u64>,
    next_thread: u64,
    last_msg_id: u64,
    sends: u64,
    /// user → (connection id, writer) of every online connection.
    online: HashMap<u64, Vec<Online>>,
    next_conn: u64,
}

pub struct FakeServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

/// The token the fake accepts for `user`: the id, big-endian, then zeros.
pub fn token_for(user: u64) -> Vec<u8> {
    let mut t = user.to_be_bytes().to_vec();
    t.resize(32, 0);
    t
}

/// Users the fake accepts by RESUME (ids 1..=n), as `courier admin provision` would list them.
pub fn users(n: usize) -> Vec<UserRecord> {
    (1..=n as u64)
        .map(|id| UserRecord {
            id,
            handle: format!("load{id}"),
            token: token_for(id),
        })
        .collect()
}

/// Writes a users file for [`users`]`(n)`.
pub fn write_users_file(n: usize, path: &Path) -> std::io::Result<()> {
    let text: String = users(n).iter().map(|u| format_user(u) + "\n").collect();
    std::fs::write(path, text)
}

impl FakeServer {
    pub fn start(faults: Faults) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(State {
            next_user: 1_000_000,
            next_thread: 1,
            ..Default::default()
        }));
        let stop2 = stop.clone();
        let accept = std::thread::Builder::new()
            .name("fake-accept".into())
            .spawn(move || {
                for sock in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(sock) = sock else { continue };
                    let state = state.clone();
                    let _ = std::thread::Builder::new()
                        .name("fake-conn".into())
                        .stack_size(128 * 1024)
                        .spawn(move || serve(sock, state, faults));
                }
            })?;
        Ok(Self {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn write_frame(w: &Mutex<TcpStream>, request_id: u32, frame: Frame) {
    let mut buf = BytesMut::new();
    encode(request_id, &frame, &mut buf);
    let _ = w.lock().expect("writer lock").write_all(&buf);
}

fn error(code: ErrorCode) -> Frame {
    proto::ErrorReply {
        code: code as u16,
        message: code.name().into(),
    }
    .into()
}

fn thread_info(id: u64, t: &Thread, kind: proto::ThreadKind) -> Frame {
    let members = t
        .members
        .iter()
        .map(|&user| proto::Member {
            user,
            ..Default::default()
        })
        .collect();
    proto::ThreadInfo {
        thread: proto::Thread {
            id,
            kind,
            members,
            ..Default::default()
        },
    }
    .into()
}

fn serve(sock: TcpStream, state: Arc<Mutex<State>>, faults: Faults) {
    let _ = sock.set_nodelay(true);
    let Ok(writer) = sock.try_clone() else { return };
    let writer = Arc::new(Mutex::new(writer));
    let mut reader = sock;
    let decoder = Decoder::default();
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut me: Option<(u64, u64)> = None; // (user, connection id)
    'conn: loop {
        loop {
            let env = match decoder.decode(&mut buf) {
                Ok(Some(env)) => env,
                Ok(None) => break,
                Err(_) => break 'conn,
            };
            let rid = env.request_id;
            let mut st = state.lock().expect("state lock");
            let reply: Option<Frame> = match env.frame {
                Frame::Hello(_) => Some(
                    proto::Welcome {
                        version: proto::VERSION,
                        max_frame: 65_536,
                        heartbeat_secs: 30,
                        node: "fake".into(),
                    }
                    .into(),
                ),
                Frame::Ping(p) => Some(proto::Pong { nonce: p.nonce }.into()),
                Frame::Resume(r) => {
                    if r.token.len() != 32 || r.token[8..].iter().any(|&b| b != 0) {
                        Some(error(ErrorCode::InvalidToken))
                    } else {
                        let user = u64::from_be_bytes(r.token[..8].try_into().expect("8 bytes"));
                        st.next_conn += 1;
                        let conn = st.next_conn;
                        st.online
                            .entry(user)
                            .or_default()
                            .push((conn, writer.clone()));
                        me = Some((user, conn));
                        Some(
                            proto::AuthOk {
                                user,
                                device: 1,
                                token: r.token.clone(),
                                handle: format!("load{user}"),
                                watermark: 0,
                            }
                            .into(),
                        )
                    }
                }
                Frame::Register(r) => {
                    if st.handles.contains_key(&r.handle) {
                        Some(error(ErrorCode::HandleTaken))
                    } else {
                        st.next_user += 1;
                        let user = st.next_user;
                        st.handles.insert(r.handle.clone(), user);
                        st.next_conn += 1;
                        let conn = st.next_conn;
                        st.online
                            .entry(user)
                            .or_default()
                            .push((conn, writer.clone()));
                        me = Some((user, conn));
                        Some(
                            proto::AuthOk {
                                user,
                                device: 1,
                                token: Bytes::from(token_for(user)),
                                handle: r.handle,
                                watermark: 0,
                            }
                            .into(),
                        )
                    }
                }
                _ if me.is_none() => Some(error(ErrorCode::NotAuthenticated)),
                Frame::OpenDirect(o) => {
                    let user = me.expect("authenticated").0;
                    let pair = (user.min(o.peer), user.max(o.peer));
                    let id = match st.direct.get(&pair) {
                        Some(&id) => id,
                        None => {
                            st.next_thread += 1;
                            let id = st.next_thread;
                            st.direct.insert(pair, id);
                            st.threads.insert(
                                id,
                                Thread {
                                    members: vec![pair.0, pair.1],
                                    messages: Vec::new(),
                                },
                            );
                            id
                        }
                    };
                    Some(thread_info(id, &st.threads[&id], proto::ThreadKind::Direct))
                }
                Frame::CreateGroup(g) => {
                    let user = me.expect("authenticated").0;
                    st.next_thread += 1;
                    let id = st.next_thread;
                    let mut members = vec![user];
                    members.extend(g.members.iter().copied().filter(|&m| m != user));
                    st.threads.insert(
                        id,
                        Thread {
                            members,
                            messages: Vec::new(),
                        },
                    );
                    let event = proto::SystemEvent {
                        event: proto::SystemEventKind::Created,
                        actor: user,
                        subject: 0,
                        text: g.name.clone(),
                        users: Vec::new(),
                    };
                    let mut body = BytesMut::new();
                    proto::wire::Wire::put(&event, &mut body);
                    let reply = thread_info(id, &st.threads[&id], proto::ThreadKind::Group);
                    write_frame(&writer, rid, reply);
                    store_and_push(
                        &mut st,
                        id,
                        user,
                        0,
                        MessageKind::System,
                        body.freeze(),
                        me,
                        faults,
                    );
                    None
                }
                Frame::AddMembers(a) => match st.threads.get_mut(&a.thread) {
                    Some(t) => {
                        t.members.extend(a.members.iter().copied());
                        Some(proto::Done {}.into())
                    }
                    None => Some(error(ErrorCode::UnknownThread)),
                },
                Frame::Send(s) => {
                    let user = me.expect("authenticated").0;
                    match st.threads.get(&s.thread) {
                        None => Some(error(ErrorCode::UnknownThread)),
                        Some(t) if !t.members.contains(&user) => Some(error(ErrorCode::NotMember)),
                        Some(_) => {
                            st.sends += 1;
                            let n = st.sends;
                            if faults.stale_ack_every > 0 && n % faults.stale_ack_every == 0 {
                                let sent = proto::Sent {
                                    thread: s.thread,
                                    message: 1,
                                    client_msg_id: s.client_msg_id,
                                };
                                Some(sent.into())
                            } else if faults.forget_every > 0 && n % faults.forget_every == 0 {
                                st.last_msg_id += 1;
                                let sent = proto::Sent {
                                    thread: s.thread,
                                    message: st.last_msg_id,
                                    client_msg_id: s.client_msg_id,
                                };
                                Some(sent.into())
                            } else {
                                let (thread, cmid) = (s.thread, s.client_msg_id);
                                let id = store_and_push(
                                    &mut st, thread, user, cmid, s.kind, s.body, me, faults,
                                );
                                // SENT goes out after the pushes here; order between them is not
                                // part of the protocol.
                                Some(
                                    proto::Sent {
                                        thread,
                                        message: id,
                                        client_msg_id: cmid,
                                    }
                                    .into(),
                                )
                            }
                        }
                    }
                }
                Frame::Sync(s) => {
                    let user = me.expect("authenticated").0;
                    let mut ids: Vec<u64> = st
                        .threads
                        .iter()
                        .filter(|(_, t)| t.members.contains(&user))
                        .map(|(&id, _)| id)
                        .collect();
                    ids.sort_unstable();
                    let messages = ids
                        .iter()
                        .flat_map(|id| {
                            st.threads[id]
                                .messages
                                .iter()
                                .filter(|m| m.id > s.since)
                                .cloned()
                        })
                        .collect();
                    Some(
                        proto::SyncBatch {
                            threads: Vec::new(),
                            messages,
                            more: false,
                            next_thread: 0,
                            next_message: 0,
                            // One page per walk here, so the walk's watermark is this one.
                            watermark: st.last_msg_id,
                            deleted: Vec::new(),
                        }
                        .into(),
                    )
                }
                Frame::Receipt(_) | Frame::ContactAdd(_) | Frame::PresenceSubscribe(_) => {
                    Some(proto::Done {}.into())
                }
                Frame::Typing(_) => None,
                _ => Some(error(ErrorCode::InvalidArgument)),
            };
            if let Some(frame) = reply {
                write_frame(&writer, rid, frame);
            }
        }
        match reader.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    if let Some((user, conn)) = me {
        let mut st = state.lock().expect("state lock");
        if let Some(list) = st.online.get_mut(&user) {
            list.retain(|(c, _)| *c != conn);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn store_and_push(
    st: &mut State,
    thread: u64,
    sender: u64,
    client_msg_id: u64,
    kind: MessageKind,
    body: Bytes,
    me: Option<(u64, u64)>,
    faults: Faults,
) -> u64 {
    let id = crate::sys::unix_micros().max(st.last_msg_id + 1);
    st.last_msg_id = id;
    let message = Message {
        thread,
        id,
        sender,
        client_msg_id,
        kind,
        recalled: false,
        body,
    };
    let t = st.threads.get_mut(&thread).expect("thread exists");
    t.messages.push(message.clone());
    let members = t.members.clone();
    let n = st.sends;
    let skip =
        kind == MessageKind::Text && faults.skip_push_every > 0 && n % faults.skip_push_every == 0;
    let twice = kind == MessageKind::Text
        && faults.duplicate_push_every > 0
        && n % faults.duplicate_push_every == 0;
    if skip {
        return id;
    }
    let push: Frame = proto::MessagePush { message }.into();
    let mut buf = BytesMut::new();
    encode(0, &push, &mut buf);
    if twice {
        encode(0, &push, &mut buf);
    }
    let my_conn = me.map(|(_, c)| c);
    for m in members {
        for (conn, w) in st.online.get(&m).map(Vec::as_slice).unwrap_or_default() {
            if Some(*conn) != my_conn {
                let _ = w.lock().expect("writer lock").write_all(&buf);
            }
        }
    }
    id
}
