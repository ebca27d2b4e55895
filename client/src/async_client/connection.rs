//! One TCP connection driven by a [`Session`] on one tokio task (the quinn shape: the task owns
//! the session and the socket; handles talk to it through a channel).
//!
//! The task waits on four things at once: bytes from the socket (fed to the session as they
//! come), room in the socket for what `poll_transmit` gave (written as is), commands from the
//! handles (requests to send), and the session's `poll_timeout` (heartbeat `PING`s and giving
//! a silent server up). After each, it routes the session's events: a reply to the caller
//! waiting for its request id, pushes and the redirect to the [`Sink`], in arrival order.
//! When the session closes, every waiting caller gets [`Error::Disconnected`], the socket is
//! dropped and the sink hears `on_close`, last.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use courier_protocol::session::{CloseReason, Event};
use courier_protocol::{ErrorCode, Frame, Session, SessionError, Welcome};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::shared::Link;
use crate::{ClientConfig, Error, Result};

/// Where a connection hands what is not a reply to one of its requests. Called on the
/// connection's task, in arrival order; must not block.
pub(crate) trait Sink: Send + Sync + 'static {
    /// A push (`MESSAGE_PUSH`, `RECEIPT_PUSH`, `PRESENCE_PUSH`, `TYPING_PUSH`).
    fn on_push(&self, frame: Frame);
    /// The server sent this user to `addr`; the close follows.
    fn on_redirect(&self, node: String, addr: String);
    /// The connection is closed; called once, last.
    fn on_close(&self, conn: &Arc<Connection>);
}

type Reply = Result<Frame>;

/// Requests queued for the task before it takes them; a full queue makes callers wait.
const COMMAND_QUEUE: usize = 64;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

enum Command {
    /// Send a request; its reply (or why it was not sent) goes to `reply`.
    Request {
        frame: Frame,
        reply: oneshot::Sender<Reply>,
    },
    /// Send a frame that has no reply (`TYPING`); `sent` hears whether the session took it.
    Send {
        frame: Frame,
        sent: oneshot::Sender<Result<()>>,
    },
}

/// What the handles can read about the connection; written by the task.
#[derive(Default)]
struct Status {
    welcome: Option<Welcome>,
    /// The server's key as the encrypted handshake proved it; `None` in plaintext.
    server_key: Option<courier_protocol::noise::PublicKey>,
    max_frame: u32,
    closed: bool,
    /// We closed it (logout, close, drop): no reconnect.
    closed_locally: bool,
    /// The code of the server's closing `ERROR_REPLY` (request id 0).
    reason: Option<ErrorCode>,
    /// A `REDIRECT` push: (node, addr).
    redirect: Option<(String, String)>,
    /// The key that `REDIRECT` named.
    redirect_key: Option<courier_protocol::noise::PublicKey>,
}

/// A handle on a live connection after the `HELLO`/`WELCOME` handshake.
pub(crate) struct Connection {
    commands: mpsc::Sender<Command>,
    /// Wakes the task to close the session; a permit is kept if the task is busy.
    close: Notify,
    status: Mutex<Status>,
}

impl Connection {
    /// Connects to `addr`, starts the task (which says `HELLO`) and waits for `WELCOME`.
    pub(crate) async fn open(
        addr: &str,
        config: &ClientConfig,
        sink: Arc<dyn Sink>,
    ) -> Result<Arc<Self>> {
        let stream =
            match tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(Error::unreachable(addr, e)),
                Err(_) => {
                    let timed_out = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no TCP connection within {:?}", config.connect_timeout),
                    );
                    return Err(Error::unreachable(addr, timed_out));
                }
            };
        stream.set_nodelay(true)?;
        let session = Session::new(config.session_config(), Instant::now().into_std());
        let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let conn = Arc::new(Connection {
            commands,
            close: Notify::new(),
            status: Mutex::new(Status::default()),
        });
        let (handshake_tx, handshake_rx) = oneshot::channel();
        let task = Task {
            conn: Arc::clone(&conn),
            session,
            waiters: HashMap::new(),
            handshake: Some(handshake_tx),
            sink,
        };
        tokio::spawn(task.run(stream, commands_rx));
        let failed = match tokio::time::timeout(config.request_timeout, handshake_rx).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(e),
            Ok(Err(_)) => Some(Error::Disconnected {
                reason: conn.close_reason(),
            }),
            Err(_) => Some(Error::Timeout {
                request: "Hello",
                after: config.request_timeout,
            }),
        };
        if let Some(e) = failed {
            conn.close();
            return Err(e);
        }
        Ok(conn)
    }

    fn disconnected(&self) -> Error {
        Error::Disconnected {
            reason: self.close_reason(),
        }
    }

    /// Sends a request and waits up to `timeout` for the reply with the same request id.
    /// `ERROR_REPLY` becomes [`Error::Server`]. A reply that comes after the timeout is
    /// dropped; its request id stays taken until then (the session's rule).
    pub(crate) async fn request(&self, frame: Frame, timeout: Duration) -> Result<Frame> {
        let request = frame.name();
        let (reply, reply_rx) = oneshot::channel();
        let sent = async {
            self.commands
                .send(Command::Request { frame, reply })
                .await
                .map_err(|_| self.disconnected())?;
            reply_rx.await.map_err(|_| self.disconnected())?
        };
        match tokio::time::timeout(timeout, sent).await {
            Ok(reply) => reply,
            Err(_) => Err(Error::Timeout {
                request,
                after: timeout,
            }),
        }
    }

    /// Sends a frame that gets no reply (`TYPING`; any reply is dropped).
    pub(crate) async fn send_only(&self, frame: Frame) -> Result<()> {
        let (sent, sent_rx) = oneshot::channel();
        self.commands
            .send(Command::Send { frame, sent })
            .await
            .map_err(|_| self.disconnected())?;
        sent_rx.await.map_err(|_| self.disconnected())?
    }
}

impl Link for Connection {
    fn welcome(&self) -> Welcome {
        self.status.lock().welcome.clone().unwrap_or_default()
    }

    fn server_key(&self) -> Option<courier_protocol::noise::PublicKey> {
        self.status.lock().server_key
    }

    fn max_frame(&self) -> u32 {
        self.status.lock().max_frame
    }

    fn closed_locally(&self) -> bool {
        self.status.lock().closed_locally
    }

    fn close_reason(&self) -> Option<ErrorCode> {
        self.status.lock().reason
    }

    fn redirect(&self) -> Option<(String, String)> {
        self.status.lock().redirect.clone()
    }

    fn redirect_key(&self) -> Option<courier_protocol::noise::PublicKey> {
        self.status.lock().redirect_key
    }

    fn is_closed(&self) -> bool {
        self.status.lock().closed
    }

    /// Closes the connection on purpose; the task closes the session and ends.
    fn close(&self) {
        self.status.lock().closed_locally = true;
        self.close.notify_one();
    }
}

/// The task's side: the session, the callers waiting for replies, the sink.
struct Task {
    conn: Arc<Connection>,
    session: Session,
    /// Callers waiting for the reply to a request id.
    waiters: HashMap<u32, oneshot::Sender<Reply>>,
    /// [`Connection::open`] waits here for `WELCOME`, or the close that came instead.
    handshake: Option<oneshot::Sender<Result<()>>>,
    sink: Arc<dyn Sink>,
}

impl Task {
    async fn run(mut self, stream: TcpStream, mut commands: mpsc::Receiver<Command>) {
        let (mut reader, mut writer) = stream.into_split();
        let mut chunk = vec![0u8; READ_CHUNK];
        // What the session gave to write and the socket has not taken yet. Refilled only when
        // empty, so `poll_transmit` swaps buffers and steady state allocates nothing.
        let mut out = BytesMut::with_capacity(4096);
        loop {
            if out.is_empty() {
                self.session.poll_transmit(&mut out);
            }
            if self.route() {
                break;
            }
            let deadline = self.session.poll_timeout();
            // Never reached when there is no deadline (the branch is disabled).
            let wake_at = deadline.map_or_else(Instant::now, Instant::from_std);
            tokio::select! {
                read = reader.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => self.session.handle_transport_closed(),
                    Ok(n) => self.session.handle_input(&chunk[..n], Instant::now().into_std()),
                },
                written = writer.write(&out), if !out.is_empty() => match written {
                    Ok(n) => out.advance(n),
                    Err(_) => self.session.handle_transport_closed(),
                },
                command = commands.recv() => match command {
                    Some(command) => self.take(command),
                    // Every handle is gone: nobody can use the connection any more.
                    None => self.session.close(),
                },
                () = self.conn.close.notified() => self.session.close(),
                () = tokio::time::sleep_until(wake_at), if deadline.is_some() => {
                    self.session.handle_timeout(Instant::now().into_std());
                }
            }
        }
        drop((reader, writer));
        self.sink.on_close(&self.conn);
    }

    /// Hands a caller's frame to the session.
    fn take(&mut self, command: Command) {
        match command {
            Command::Request { frame, reply } => match self.session.send_request(&frame) {
                Ok(id) => {
                    self.waiters.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(self.refused(e)));
                }
            },
            Command::Send { frame, sent } => {
                let result = self.session.send_request(&frame).map(drop);
                let _ = sent.send(result.map_err(|e| self.refused(e)));
            }
        }
    }

    fn refused(&self, e: SessionError) -> Error {
        match e {
            SessionError::Closed => self.conn.disconnected(),
            other => other.into(),
        }
    }

    /// Routes every event the session has; true once it closed.
    fn route(&mut self) -> bool {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Welcomed(welcome) => {
                    {
                        let mut status = self.conn.status.lock();
                        status.welcome = Some(welcome);
                        status.max_frame = self.session.max_send_frame();
                        status.server_key = self.session.server_key();
                    }
                    if let Some(tx) = self.handshake.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Event::Authenticated { request_id, auth } => {
                    if let Some(waiter) = self.waiters.remove(&request_id) {
                        let _ = waiter.send(Ok(Frame::AuthOk(auth)));
                    }
                }
                Event::Reply { request_id, frame } => {
                    if let Some(waiter) = self.waiters.remove(&request_id) {
                        let _ = waiter.send(Error::reply(frame));
                    }
                }
                Event::Push(frame) => self.sink.on_push(frame),
                Event::Redirect { node, addr, key } => {
                    {
                        let mut status = self.conn.status.lock();
                        status.redirect = Some((node.clone(), addr.clone()));
                        status.redirect_key = key;
                    }
                    self.sink.on_redirect(node, addr);
                }
                Event::Closed { reason } => {
                    let code = {
                        let mut status = self.conn.status.lock();
                        if let CloseReason::Server { code, .. } = reason {
                            status.reason = ErrorCode::from_u16(code);
                        }
                        status.closed = true;
                        status.reason
                    };
                    if let Some(tx) = self.handshake.take() {
                        let _ = tx.send(Err(Error::handshake(reason, code)));
                    }
                    // Dropping the senders wakes every waiting request with `Disconnected`.
                    self.waiters.clear();
                    return true;
                }
            }
        }
        false
    }
}
