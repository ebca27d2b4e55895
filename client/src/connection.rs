//! One TCP connection: a writer shared by callers, a reader thread that routes replies to
//! waiting requests by request id, and a heartbeat thread.
//!
//! Lock order: `Connection::shared` before `Connection::writer`. Neither is held while calling
//! into the [`Sink`].

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread;
use std::time::Duration;

use bytes::BytesMut;
use courier_protocol::{encode, Decoder, ErrorCode, Frame, Hello, Ping, Welcome, VERSION};
use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::{ClientConfig, Error, Result};

/// Where a connection hands what is not a reply to one of its requests.
pub(crate) trait Sink: Send + Sync {
    /// A push (request id 0), in arrival order. Called on the reader thread.
    fn on_push(&self, conn: &Arc<Connection>, frame: Frame);
    /// The connection is closed; called once, last, on the reader thread.
    fn on_close(&self, conn: &Arc<Connection>);
}

type Reply = Result<Frame>;

#[derive(Default)]
struct Shared {
    closed: bool,
    /// We closed it (logout, close, drop): no reconnect.
    closed_locally: bool,
    /// The code of the server's closing `ERROR_REPLY` (request id 0).
    reason: Option<ErrorCode>,
    /// A `REDIRECT` push: (node, addr).
    redirect: Option<(String, String)>,
    pending: HashMap<u32, Sender<Reply>>,
    heartbeat_stop: Option<Sender<()>>,
}

struct Writer {
    stream: TcpStream,
    buf: BytesMut,
}

/// A live connection after the `HELLO`/`WELCOME` handshake.
pub(crate) struct Connection {
    welcome: OnceLock<Welcome>,
    writer: Mutex<Writer>,
    shared: Mutex<Shared>,
    next_id: AtomicU32,
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
        let conn = Arc::new(Connection {
            welcome: OnceLock::new(),
            writer: Mutex::new(Writer {
                stream,
                buf: BytesMut::with_capacity(4096),
            }),
            shared: Mutex::new(Shared::default()),
            next_id: AtomicU32::new(1),
        });
        // The reader runs before HELLO is sent so that WELCOME can be routed.
        let decoder = Decoder::new(config.max_frame_len);
        let reader_conn = Arc::clone(&conn);
        thread::Builder::new()
            .name("courier-reader".into())
            .spawn(move || read_loop(reader_conn, read_half, decoder, sink))?;

        let hello = Hello {
            version: VERSION,
            client: config.client_name.clone(),
        };
        let welcome = match conn.request(hello.into(), config.request_timeout) {
            Ok(Frame::Welcome(w)) => w,
            Ok(other) => {
                conn.close();
                return Err(Error::UnexpectedReply {
                    request: "Hello",
                    reply: other.name(),
                });
            }
            Err(e) => {
                conn.close();
                return Err(e);
            }
        };
        if welcome.version != VERSION {
            conn.close();
            return Err(Error::VersionMismatch {
                server: welcome.version,
                client: VERSION,
            });
        }
        let heartbeat = Duration::from_secs(welcome.heartbeat_secs.into());
        let _ = conn.welcome.set(welcome);
        conn.start_heartbeat(heartbeat);
        Ok(conn)
    }

    /// The server's `WELCOME`.
    pub(crate) fn welcome(&self) -> Welcome {
        self.welcome.get().cloned().unwrap_or_default()
    }

    /// The server's frame limit, or the protocol default before `WELCOME`.
    pub(crate) fn max_frame(&self) -> u32 {
        match self.welcome.get() {
            Some(w) if w.max_frame > 0 => w.max_frame,
            _ => courier_protocol::DEFAULT_MAX_FRAME_LEN,
        }
    }

    /// Whether this side closed the connection on purpose.
    pub(crate) fn closed_locally(&self) -> bool {
        self.shared.lock().closed_locally
    }

    /// The code the server gave when it closed, if any.
    pub(crate) fn close_reason(&self) -> Option<ErrorCode> {
        self.shared.lock().reason
    }

    /// The `REDIRECT` the server sent on this connection, as (node, addr).
    pub(crate) fn redirect(&self) -> Option<(String, String)> {
        self.shared.lock().redirect.clone()
    }

    /// Whether the connection is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    fn next_request_id(&self) -> u32 {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Sends a request and waits for the reply with the same request id. `ERROR_REPLY` becomes
    /// [`Error::Server`].
    pub(crate) fn request(&self, frame: Frame, timeout: Duration) -> Result<Frame> {
        let request = frame.name();
        let id = self.next_request_id();
        let (tx, rx) = bounded(1);
        {
            let mut shared = self.shared.lock();
            if shared.closed {
                return Err(Error::Disconnected {
                    reason: shared.reason,
                });
            }
            shared.pending.insert(id, tx);
        }
        if let Err(e) = self.write(id, &frame) {
            self.shared.lock().pending.remove(&id);
            return Err(e);
        }
        match rx.recv_timeout(timeout) {
            Ok(reply) => reply,
            Err(RecvTimeoutError::Timeout) => {
                self.shared.lock().pending.remove(&id);
                Err(Error::Timeout {
                    request,
                    after: timeout,
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::Disconnected {
                reason: self.close_reason(),
            }),
        }
    }

    /// Sends a frame that gets no reply (`TYPING`, `PING`).
    pub(crate) fn send_only(&self, frame: Frame) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Disconnected {
                reason: self.close_reason(),
            });
        }
        let id = self.next_request_id();
        self.write(id, &frame)
    }

    fn write(&self, request_id: u32, frame: &Frame) -> Result<()> {
        let mut writer = self.writer.lock();
        let Writer { stream, buf } = &mut *writer;
        buf.clear();
        encode(request_id, frame, buf);
        if let Err(e) = stream.write_all(buf) {
            // Half a frame may be out: the stream is no longer aligned, so it is done for.
            let _ = stream.shutdown(Shutdown::Both);
            return Err(Error::Io(e));
        }
        Ok(())
    }

    /// Closes the connection on purpose; the reader sees the close and ends.
    pub(crate) fn close(&self) {
        self.shared.lock().closed_locally = true;
        let _ = self.writer.lock().stream.shutdown(Shutdown::Both);
    }

    /// Drops the socket without marking the close as ours, as a network failure would (tests).
    #[cfg(test)]
    pub(crate) fn break_for_test(&self) {
        let _ = self.writer.lock().stream.shutdown(Shutdown::Both);
    }

    fn start_heartbeat(self: &Arc<Self>, every: Duration) {
        if every.is_zero() {
            return;
        }
        let (stop_tx, stop_rx) = bounded::<()>(0);
        {
            let mut shared = self.shared.lock();
            if shared.closed {
                return;
            }
            shared.heartbeat_stop = Some(stop_tx);
        }
        let conn: Weak<Connection> = Arc::downgrade(self);
        let spawned = thread::Builder::new()
            .name("courier-heartbeat".into())
            .spawn(move || {
                let mut nonce = 0u64;
                // Ends when the sender is dropped: on close.
                while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(every) {
                    let Some(conn) = conn.upgrade() else { return };
                    nonce += 1;
                    // PONG is answered with this id, which no request waits on: the reader drops it.
                    if conn.send_only(Ping { nonce }.into()).is_err() {
                        return;
                    }
                }
            });
        if spawned.is_err() {
            // Without a heartbeat the server will time us out; better to say so now.
            self.close();
        }
    }

    fn dispatch(self: &Arc<Self>, request_id: u32, frame: Frame, sink: &dyn Sink) {
        if request_id == 0 {
            match &frame {
                Frame::ErrorReply(e) => {
                    self.shared.lock().reason = ErrorCode::from_u16(e.code);
                }
                Frame::Redirect(r) => {
                    self.shared.lock().redirect = Some((r.node.clone(), r.addr.clone()));
                }
                _ => {}
            }
            sink.on_push(self, frame);
            return;
        }
        let waiter = self.shared.lock().pending.remove(&request_id);
        if let Some(waiter) = waiter {
            let reply = match frame {
                Frame::ErrorReply(e) => Err(Error::from_reply(e.code, e.message)),
                other => Ok(other),
            };
            let _ = waiter.try_send(reply);
        }
    }

    fn finish(&self) {
        let mut shared = self.shared.lock();
        shared.closed = true;
        // Dropping the senders wakes every waiting request with `Disconnected`.
        shared.pending.clear();
        shared.heartbeat_stop = None;
        drop(shared);
        let _ = self.writer.lock().stream.shutdown(Shutdown::Both);
    }
}

fn read_loop(conn: Arc<Connection>, mut stream: TcpStream, decoder: Decoder, sink: Arc<dyn Sink>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    'read: loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(env)) => conn.dispatch(env.request_id, env.frame, &*sink),
                Ok(None) => break,
                // The byte stream can no longer be trusted to be aligned on frames.
                Err(_) => break 'read,
            }
        }
    }
    conn.finish();
    sink.on_close(&conn);
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
