//! One TCP connection driven by a [`Session`] (the protocol: handshake, request ids, reply
//! matching, heartbeat, close). Callers send requests through it and wait on a channel for
//! their reply; a reader thread feeds the session what arrives and routes its events (replies
//! to the waiting callers, pushes, the redirect and the close to the [`Sink`]); a heartbeat
//! thread sleeps until the session's `poll_timeout` and calls `handle_timeout`.
//!
//! Lock order: `Connection::writer` before `Connection::core`. `core` is never held while
//! writing to the socket (the reader must always be able to route replies), and neither is
//! held while calling into the [`Sink`].

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use courier_protocol::session::{CloseReason, Event};
use courier_protocol::{ErrorCode, Frame, Session, SessionError, Welcome};
use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::{ClientConfig, Error, Result};

/// Where a connection hands what is not a reply to one of its requests. Called on the reader
/// thread, in arrival order.
pub(crate) trait Sink: Send + Sync {
    /// A push (`MESSAGE_PUSH`, `RECEIPT_PUSH`, `PRESENCE_PUSH`, `TYPING_PUSH`).
    fn on_push(&self, conn: &Arc<Connection>, frame: Frame);
    /// The server sent this user to `addr`; the close follows.
    fn on_redirect(&self, conn: &Arc<Connection>, node: String, addr: String);
    /// The connection is closed; called once, last.
    fn on_close(&self, conn: &Arc<Connection>);
}

type Reply = Result<Frame>;

/// A request sent and not yet awaited ([`Connection::start`]).
pub(crate) struct Pending {
    id: u32,
    request: &'static str,
    rx: crossbeam_channel::Receiver<Reply>,
}

/// The session and what routes its events; behind `Connection::core`.
struct Core {
    session: Session,
    /// Callers waiting for the reply to a request id.
    waiters: HashMap<u32, Sender<Reply>>,
    /// [`Connection::open`] waits here for `WELCOME`, or the close that came instead.
    handshake: Option<Sender<Result<()>>>,
    closed: bool,
    /// We closed it (logout, close, drop): no reconnect.
    closed_locally: bool,
    /// The code of the server's closing `ERROR_REPLY` (request id 0).
    reason: Option<ErrorCode>,
    /// A `REDIRECT` push: (node, addr).
    redirect: Option<(String, String)>,
    /// The key that `REDIRECT` named.
    redirect_key: Option<courier_protocol::noise::PublicKey>,
    /// Dropped to wake and end the heartbeat thread.
    heartbeat_stop: Option<Sender<()>>,
}

struct Writer {
    stream: TcpStream,
    /// What the session gave to write; swapped with the session's own buffer, so steady
    /// state allocates nothing.
    buf: BytesMut,
}

/// An event routed under `core` and handed over, in arrival order, once it is unlocked.
enum Routed {
    Reply(Sender<Reply>, Reply),
    Push(Frame),
    Redirect(String, String),
}

/// A live connection after the `HELLO`/`WELCOME` handshake.
pub(crate) struct Connection {
    core: Mutex<Core>,
    writer: Mutex<Writer>,
    /// A handle on the socket to shut it down without waiting for a blocked write.
    control: TcpStream,
    sink: Arc<dyn Sink>,
}

impl Connection {
    /// Connects to `addr`, starts the reader, says `HELLO`, waits for `WELCOME`, then starts
    /// the heartbeat.
    pub(crate) fn open(
        addr: &str,
        config: &ClientConfig,
        sink: Arc<dyn Sink>,
    ) -> Result<Arc<Self>> {
        let stream = connect(addr, config.connect_timeout)?;
        stream.set_nodelay(true)?;
        // A write blocked longer than a request may wait means the server is gone.
        stream.set_write_timeout(Some(config.request_timeout))?;
        let read_half = stream.try_clone()?;
        let control = stream.try_clone()?;
        let session = Session::new(config.session_config(), Instant::now());
        let (handshake_tx, handshake_rx) = bounded(1);
        let conn = Arc::new(Connection {
            core: Mutex::new(Core {
                session,
                waiters: HashMap::new(),
                handshake: Some(handshake_tx),
                closed: false,
                closed_locally: false,
                reason: None,
                redirect: None,
                redirect_key: None,
                heartbeat_stop: None,
            }),
            writer: Mutex::new(Writer {
                stream,
                buf: BytesMut::with_capacity(4096),
            }),
            control,
            sink,
        });
        // The reader runs before HELLO is written so that WELCOME can be routed.
        let reader_conn = Arc::clone(&conn);
        thread::Builder::new()
            .name("courier-reader".into())
            .spawn(move || read_loop(reader_conn, read_half))?;

        let handshake = match conn.flush() {
            Ok(()) => handshake_rx.recv_timeout(config.request_timeout),
            Err(e) => Ok(Err(e)),
        };
        let failed = match handshake {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(RecvTimeoutError::Timeout) => Some(Error::Timeout {
                request: "Hello",
                after: config.request_timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Some(Error::Disconnected {
                reason: conn.close_reason(),
            }),
        };
        if let Some(e) = failed {
            conn.close();
            return Err(e);
        }
        conn.start_heartbeat();
        Ok(conn)
    }

    /// The server's `WELCOME`.
    pub(crate) fn welcome(&self) -> Welcome {
        self.core
            .lock()
            .session
            .welcome()
            .cloned()
            .unwrap_or_default()
    }

    /// The server's key as the encrypted handshake proved it; `None` in plaintext.
    pub(crate) fn server_key(&self) -> Option<courier_protocol::noise::PublicKey> {
        self.core.lock().session.server_key()
    }

    /// The largest frame the server accepts.
    pub(crate) fn max_frame(&self) -> u32 {
        self.core.lock().session.max_send_frame()
    }

    /// Whether this side closed the connection on purpose.
    pub(crate) fn closed_locally(&self) -> bool {
        self.core.lock().closed_locally
    }

    /// The code the server gave when it closed, if any.
    pub(crate) fn close_reason(&self) -> Option<ErrorCode> {
        self.core.lock().reason
    }

    /// The `REDIRECT` the server sent on this connection, as (node, addr).
    pub(crate) fn redirect(&self) -> Option<(String, String)> {
        self.core.lock().redirect.clone()
    }

    /// The key the `REDIRECT` on this connection named.
    pub(crate) fn redirect_key(&self) -> Option<courier_protocol::noise::PublicKey> {
        self.core.lock().redirect_key
    }

    /// Whether the connection is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.core.lock().closed
    }

    /// Sends a request and waits for the reply with the same request id. `ERROR_REPLY` becomes
    /// [`Error::Server`].
    pub(crate) fn request(&self, frame: Frame, timeout: Duration) -> Result<Frame> {
        let pending = self.start(&frame)?;
        self.finish(pending, timeout)
    }

    /// Sends a request without waiting: several may be in flight (a pipelined upload), each
    /// then awaited with [`finish`](Self::finish), in any order.
    pub(crate) fn start(&self, frame: &Frame) -> Result<Pending> {
        let (tx, rx) = bounded(1);
        let id = self.send(frame, Some(tx))?;
        Ok(Pending {
            id,
            request: frame.name(),
            rx,
        })
    }

    /// Waits for the reply to a request sent with [`start`](Self::start).
    pub(crate) fn finish(&self, pending: Pending, timeout: Duration) -> Result<Frame> {
        match pending.rx.recv_timeout(timeout) {
            Ok(reply) => reply,
            Err(RecvTimeoutError::Timeout) => {
                let mut core = self.core.lock();
                core.waiters.remove(&pending.id);
                // The id stays taken until the late reply comes, which the session drops.
                core.session.cancel(pending.id);
                Err(Error::Timeout {
                    request: pending.request,
                    after: timeout,
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::Disconnected {
                reason: self.close_reason(),
            }),
        }
    }

    /// Sends a frame and does not wait for a reply (`TYPING`; any reply is dropped).
    pub(crate) fn send_only(&self, frame: Frame) -> Result<()> {
        self.send(&frame, None).map(drop)
    }

    /// Hands `frame` to the session and writes what it encodes; `waiter` gets the reply.
    fn send(&self, frame: &Frame, waiter: Option<Sender<Reply>>) -> Result<u32> {
        let mut writer = self.writer.lock();
        let id = {
            let mut core = self.core.lock();
            if core.closed {
                return Err(Error::Disconnected {
                    reason: core.reason,
                });
            }
            let id = match core.session.send_request(frame) {
                Ok(id) => id,
                Err(SessionError::Closed) => {
                    return Err(Error::Disconnected {
                        reason: core.reason,
                    })
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(waiter) = waiter {
                core.waiters.insert(id, waiter);
            }
            writer.buf.clear();
            core.session.poll_transmit(&mut writer.buf);
            id
        };
        if let Err(e) = write_out(&mut writer) {
            drop(writer);
            let mut core = self.core.lock();
            core.waiters.remove(&id);
            core.session.cancel(id);
            return Err(e);
        }
        Ok(id)
    }

    /// Writes whatever the session has queued (the `HELLO`).
    fn flush(&self) -> Result<()> {
        let mut writer = self.writer.lock();
        writer.buf.clear();
        self.core.lock().session.poll_transmit(&mut writer.buf);
        write_out(&mut writer)
    }

    /// Closes the connection on purpose; the reader sees the close and ends.
    pub(crate) fn close(&self) {
        let mut routed = Vec::new();
        {
            let mut core = self.core.lock();
            core.closed_locally = true;
            core.session.close();
            self.route(&mut core, &mut routed);
        }
        // The reader drains every event it causes while it holds `core`: only the close is
        // left, and routing it needs no hand-over.
        debug_assert!(routed.is_empty());
        let _ = self.control.shutdown(Shutdown::Both);
    }

    /// Drops the socket without marking the close as ours, as a network failure would (tests).
    #[cfg(test)]
    pub(crate) fn break_for_test(&self) {
        let _ = self.control.shutdown(Shutdown::Both);
    }

    /// Routes every event the session has: the handshake's end to `open`, the close to
    /// everyone; replies (with their waiter), pushes and the redirect into `routed`, to be
    /// handed over in order once `core` is unlocked, as they arrived.
    fn route(&self, core: &mut Core, routed: &mut Vec<Routed>) {
        while let Some(event) = core.session.poll_event() {
            match event {
                Event::Welcomed(_) => {
                    if let Some(tx) = core.handshake.take() {
                        let _ = tx.try_send(Ok(()));
                    }
                }
                Event::Authenticated { request_id, auth } => {
                    if let Some(waiter) = core.waiters.remove(&request_id) {
                        routed.push(Routed::Reply(waiter, Ok(Frame::AuthOk(auth))));
                    }
                }
                Event::Reply { request_id, frame } => {
                    if let Some(waiter) = core.waiters.remove(&request_id) {
                        routed.push(Routed::Reply(waiter, Error::reply(frame)));
                    }
                }
                Event::Push(frame) => routed.push(Routed::Push(frame)),
                Event::Redirect { node, addr, key } => {
                    core.redirect = Some((node.clone(), addr.clone()));
                    core.redirect_key = key;
                    routed.push(Routed::Redirect(node, addr));
                }
                Event::Closed { reason } => {
                    if let CloseReason::Server { code, .. } = reason {
                        core.reason = ErrorCode::from_u16(code);
                    }
                    core.closed = true;
                    if let Some(tx) = core.handshake.take() {
                        let _ = tx.try_send(Err(Error::handshake(reason, core.reason)));
                    }
                    // Dropping the senders wakes every waiting request with `Disconnected`.
                    core.waiters.clear();
                    core.heartbeat_stop = None;
                    let _ = self.control.shutdown(Shutdown::Both);
                }
            }
        }
    }

    fn start_heartbeat(self: &Arc<Self>) {
        let (stop_tx, stop_rx) = bounded::<()>(0);
        {
            let mut core = self.core.lock();
            if core.closed || core.session.poll_timeout().is_none() {
                return;
            }
            core.heartbeat_stop = Some(stop_tx);
        }
        let conn: Weak<Connection> = Arc::downgrade(self);
        let spawned = thread::Builder::new()
            .name("courier-heartbeat".into())
            .spawn(move || loop {
                let deadline = {
                    let Some(conn) = conn.upgrade() else { return };
                    let Some(deadline) = conn.core.lock().session.poll_timeout() else {
                        return;
                    };
                    deadline
                };
                // Ends when the sender is dropped: on close.
                let wait = deadline.saturating_duration_since(Instant::now());
                if stop_rx.recv_timeout(wait) != Err(RecvTimeoutError::Timeout) {
                    return;
                }
                let Some(conn) = conn.upgrade() else { return };
                if conn.on_timer().is_err() {
                    return;
                }
            });
        if spawned.is_err() {
            // Without a heartbeat the server will time us out; better to say so now.
            self.close();
        }
    }

    /// The heartbeat's deadline passed: the session pings, or gives the server up for dead.
    fn on_timer(&self) -> Result<()> {
        let mut writer = self.writer.lock();
        let mut routed = Vec::new();
        {
            let mut core = self.core.lock();
            core.session.handle_timeout(Instant::now());
            writer.buf.clear();
            core.session.poll_transmit(&mut writer.buf);
            self.route(&mut core, &mut routed);
        }
        // A timeout yields a PING or the close, nothing to hand over.
        debug_assert!(routed.is_empty());
        write_out(&mut writer)
    }
}

/// Writes the writer's buffer whole.
fn write_out(writer: &mut Writer) -> Result<()> {
    let Writer { stream, buf } = writer;
    if buf.is_empty() {
        return Ok(());
    }
    if let Err(e) = stream.write_all(buf) {
        // Half a frame may be out: the stream is no longer aligned, so it is done for.
        let _ = stream.shutdown(Shutdown::Both);
        return Err(Error::Io(e));
    }
    buf.clear();
    Ok(())
}

fn read_loop(conn: Arc<Connection>, mut stream: TcpStream) {
    let mut chunk = vec![0u8; 16 * 1024];
    let mut routed = Vec::new();
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let (closed, secured_now) = {
            let mut core = conn.core.lock();
            let was_secured = core.session.is_secured();
            core.session.handle_input(&chunk[..n], Instant::now());
            conn.route(&mut core, &mut routed);
            (core.closed, !was_secured && core.session.is_secured())
        };
        if secured_now {
            // The encrypted handshake just ended: its last message (XX) and the HELLO it held
            // back go out now. A failed write closes the connection, which the reader sees.
            let _ = conn.flush();
        }
        hand_over(&conn, &mut routed);
        if closed {
            break;
        }
    }
    {
        let mut core = conn.core.lock();
        core.session.handle_transport_closed();
        conn.route(&mut core, &mut routed);
    }
    hand_over(&conn, &mut routed);
    conn.sink.on_close(&conn);
}

/// Wakes the waiting callers and calls the sink, in the order the frames arrived.
fn hand_over(conn: &Arc<Connection>, routed: &mut Vec<Routed>) {
    for item in routed.drain(..) {
        match item {
            Routed::Reply(waiter, reply) => {
                let _ = waiter.try_send(reply);
            }
            Routed::Push(frame) => conn.sink.on_push(conn, frame),
            Routed::Redirect(node, addr) => conn.sink.on_redirect(conn, node, addr),
        }
    }
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| Error::unreachable(addr, e))?
        .collect();
    let mut last = std::io::Error::new(ErrorKind::NotFound, "the address resolved to nothing");
    for sock in addrs {
        match TcpStream::connect_timeout(&sock, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(Error::unreachable(addr, last))
}
