//! WebSocket (RFC 6455) under the Courier byte stream, on the shard's own loop (`--listen-ws`).
//!
//! A WebSocket connection is a [`Conn`] like any other, with [`flag::WS`] set: the same
//! slab, wheel, limits, rate bucket and slow-consumer rule. Only the layer under the stream
//! differs:
//!
//! ```text
//!  accept (WS listener) -> upgrade request held in Conn::input (at most 4 KiB, within the
//!                          handshake deadline) -> tungstenite's parser and response
//!                          (403 for an Origin not allowed, 400 for a bad request; a plain GET
//!                          gets a static file of --web-root, or 426)
//!  read:  socket -> scratch -> [`WsFrames::next`]: tungstenite's FrameHeader::parse, unmask
//!         in place -> the payload of binary messages is the Courier stream (Noise records,
//!         or plaintext frames), exactly the bytes TCP would carry -> on_bytes
//!  write: what the round queued (sealed first when encrypted) -> one binary message header
//!         in front of it ([`Output::frame_ws`]) -> writev
//! ```
//!
//! Memory: an idle WebSocket connection holds nothing more than a TCP one. Its per-frame state
//! ([`WsFrames`]: a partial header, the rest of a frame and its mask, a partial control frame)
//! is boxed in [`Conn::ws`] only while a frame or a fragmented message is incomplete, during
//! the upgrade, and once a close frame went out; it is `None` between messages.
//!
//! Messages and the stream: a binary message may hold several Courier frames or records, or
//! part of one; the server sees only the stream. A message may be at most as long as the
//! largest frame or record the connection may send at that point (before authentication:
//! 16 KiB; after: 64 KiB or `--max-frame` + 4), so a client sending one frame or record per
//! message never meets the limit; a longer one is refused with close code 1009. A text
//! message is refused with 1003. Pings are answered with pongs and count as liveness, like
//! Courier's `PING`. Whenever the server closes an upgraded connection, it writes its
//! `ERROR_REPLY(0, code)` (if any) and then a close frame.

use std::io::Cursor;

use bytes::{BufMut, Bytes, BytesMut};
use courier_protocol::noise::MAX_RECORD_LEN;
use courier_protocol::{ErrorCode, LEN_BYTES};
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};
use tungstenite::http::{HeaderValue, Response, StatusCode};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::conn::{flag, Conn, Crypto, Output, State};
use super::io::{PRE_AUTH_MAX_FRAME, PRE_AUTH_MAX_RECORD};
use super::Shard;
use crate::metrics::{Reason, ShardMetrics, WsRefusal};

/// The longest upgrade request (request line and headers) a client may send.
pub const MAX_UPGRADE_REQUEST: usize = 4096;

/// The subprotocol the server agrees to when a client offers it (`Sec-WebSocket-Protocol`).
/// Optional: a client that offers none is served the same.
pub const SUBPROTOCOL: &str = "courier.v1";

/// Close codes (RFC 6455 section 7.4.1).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

/// The largest control frame payload (RFC 6455 section 5.5).
const MAX_CONTROL: usize = 125;

/// What a client's frames did wrong: the connection is closed with the close code.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("a text message: Courier speaks only in binary messages")]
    Text,
    #[error("a message of {len} bytes or more: at most {limit} bytes may go in one message at this point; send the stream in several messages")]
    TooBig { len: u64, limit: u64 },
    #[error("an unmasked frame: a client must mask every frame (RFC 6455 section 5.1)")]
    Unmasked,
    #[error("a bad frame: {0}")]
    Frame(&'static str),
    #[error("a bad frame header: {0}")]
    Header(#[from] tungstenite::Error),
}

impl WsError {
    /// The close code the server ends the connection with.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Text => close::UNSUPPORTED_DATA,
            WsError::TooBig { .. } => close::MESSAGE_TOO_BIG,
            _ => close::PROTOCOL_ERROR,
        }
    }

    /// The error code of the `ERROR_REPLY` that goes before the close frame.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            WsError::TooBig { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::Malformed,
        }
    }
}

/// What a frame was, for the payload that follows its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Ping,
    Pong,
    Close,
}

/// The frame whose payload is arriving.
#[derive(Debug, Clone, Copy)]
struct InFrame {
    kind: Kind,
    /// Payload bytes not yet arrived.
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes already unmasked, modulo 4: where in the mask the next byte starts.
    mask_pos: u8,
    fin: bool,
}

/// What the frames of a connection yielded.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Payload of a binary message (a piece of the Courier stream), unmasked.
    Data(&'a [u8]),
    /// A whole ping; answer it with a pong of the same payload.
    Ping(ControlPayload),
    Pong,
    /// The client's close frame, with its code if it gave one.
    Close(Option<u16>),
}

/// A control frame's payload (at most 125 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ControlPayload {
    buf: [u8; MAX_CONTROL],
    len: u8,
}

impl ControlPayload {
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

impl std::fmt::Debug for ControlPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_slice())
    }
}

/// One connection's WebSocket state while it needs any (see the module docs): boxed in
/// [`Conn::ws`], dropped between messages.
#[derive(Clone)]
pub struct WsFrames {
    /// The upgrade is done; before, the request arrives in [`Conn::input`].
    pub upgraded: bool,
    /// A close frame went out: nothing is written after it.
    pub close_sent: bool,
    /// The close code the server chose (a frame error), instead of the one its close reason
    /// implies.
    pub close_code: Option<u16>,
    /// The start of a frame header that has not all arrived.
    header: [u8; 14],
    header_len: u8,
    frame: Option<InFrame>,
    /// Bytes so far of a data message whose final frame has not arrived.
    message: Option<u64>,
    /// A control frame's payload so far.
    control: [u8; MAX_CONTROL],
    control_len: u8,
}

impl WsFrames {
    /// A connection accepted on a WebSocket listener: the upgrade comes first.
    pub fn upgrading() -> WsFrames {
        WsFrames {
            upgraded: false,
            close_sent: false,
            close_code: None,
            header: [0; 14],
            header_len: 0,
            frame: None,
            message: None,
            control: [0; MAX_CONTROL],
            control_len: 0,
        }
    }

    /// An upgraded connection between messages (what `Conn::ws == None` means).
    pub fn open() -> WsFrames {
        WsFrames {
            upgraded: true,
            ..WsFrames::upgrading()
        }
    }

    /// Whether nothing needs keeping: the connection can drop its box.
    pub fn is_idle(&self) -> bool {
        self.upgraded
            && !self.close_sent
            && self.close_code.is_none()
            && self.header_len == 0
            && self.frame.is_none()
            && self.message.is_none()
    }

    /// Decodes the next event from `data[*pos..]`, unmasking payload in place; `Ok(None)` once
    /// `data` is used up (what is incomplete is kept). `limit` bounds a data message.
    pub fn next<'a>(
        &mut self,
        data: &'a mut [u8],
        pos: &mut usize,
        limit: u64,
    ) -> Result<Option<Event<'a>>, WsError> {
        loop {
            let Some(mut frame) = self.frame else {
                if !self.read_header(data, pos, limit)? {
                    return Ok(None);
                }
                continue;
            };
            let available = (data.len() - *pos) as u64;
            let n = frame.remaining.min(available) as usize;
            let chunk = &mut data[*pos..*pos + n];
            unmask(chunk, frame.mask, frame.mask_pos);
            *pos += n;
            frame.remaining -= n as u64;
            frame.mask_pos = ((frame.mask_pos as usize + n) % 4) as u8;
            let done = frame.remaining == 0;
            self.frame = if done { None } else { Some(frame) };
            if frame.kind == Kind::Data {
                if done && frame.fin {
                    self.message = None;
                }
                if n == 0 {
                    if done {
                        continue;
                    }
                    return Ok(None);
                }
                return Ok(Some(Event::Data(&data[*pos - n..*pos])));
            }
            let at = self.control_len as usize;
            self.control[at..at + n].copy_from_slice(&data[*pos - n..*pos]);
            self.control_len += n as u8;
            if !done {
                return Ok(None);
            }
            let payload = ControlPayload {
                buf: self.control,
                len: self.control_len,
            };
            self.control_len = 0;
            return Ok(Some(match frame.kind {
                Kind::Ping => Event::Ping(payload),
                Kind::Pong => Event::Pong,
                _ => Event::Close(
                    (payload.len >= 2)
                        .then(|| u16::from_be_bytes([payload.buf[0], payload.buf[1]])),
                ),
            }));
        }
    }

    /// Parses a frame header (with tungstenite's parser) from the held start of one and
    /// `data`; false when it has not all arrived (what arrived is held).
    fn read_header(&mut self, data: &[u8], pos: &mut usize, limit: u64) -> Result<bool, WsError> {
        let held = self.header_len as usize;
        let take = (self.header.len() - held).min(data.len() - *pos);
        let parsed = if held == 0 {
            let mut cursor = Cursor::new(&data[*pos..]);
            FrameHeader::parse(&mut cursor)?.map(|h| (h, cursor.position() as usize))
        } else {
            self.header[held..held + take].copy_from_slice(&data[*pos..*pos + take]);
            let mut cursor = Cursor::new(&self.header[..held + take]);
            FrameHeader::parse(&mut cursor)?.map(|h| (h, cursor.position() as usize - held))
        };
        let Some(((header, len), used)) = parsed else {
            // A header is at most 14 bytes: fewer than that arrived.
            if held == 0 {
                self.header[..data.len() - *pos].copy_from_slice(&data[*pos..]);
                self.header_len = (data.len() - *pos) as u8;
            } else {
                self.header_len = (held + take) as u8;
            }
            *pos = data.len();
            return Ok(false);
        };
        self.header_len = 0;
        *pos += used;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::Frame("reserved bits set without an extension"));
        }
        let Some(mask) = header.mask else {
            return Err(WsError::Unmasked);
        };
        let kind = match header.opcode {
            OpCode::Data(Data::Text) => return Err(WsError::Text),
            OpCode::Data(Data::Binary) if self.message.is_some() => {
                return Err(WsError::Frame("a new message inside a fragmented one"))
            }
            OpCode::Data(Data::Continue) if self.message.is_none() => {
                return Err(WsError::Frame("a continuation frame outside a message"))
            }
            OpCode::Data(Data::Binary | Data::Continue) => Kind::Data,
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                return Err(WsError::Frame("a reserved opcode"))
            }
            OpCode::Control(c) => {
                if len > MAX_CONTROL as u64 || !header.is_final {
                    return Err(WsError::Frame(
                        "a control frame longer than 125 bytes or fragmented",
                    ));
                }
                match c {
                    Control::Ping => Kind::Ping,
                    Control::Pong => Kind::Pong,
                    _ => Kind::Close,
                }
            }
        };
        if kind == Kind::Data {
            let so_far = self.message.unwrap_or(0).saturating_add(len);
            if so_far > limit {
                return Err(WsError::TooBig { len: so_far, limit });
            }
            self.message = Some(so_far);
        }
        self.frame = Some(InFrame {
            kind,
            remaining: len,
            mask,
            mask_pos: 0,
            fin: header.is_final,
        });
        Ok(true)
    }
}

/// XORs `buf` with `mask`, starting `offset` bytes into it.
fn unmask(buf: &mut [u8], mask: [u8; 4], offset: u8) {
    let mut m = [0u8; 4];
    for (i, b) in m.iter_mut().enumerate() {
        *b = mask[(i + offset as usize) % 4];
    }
    let mut chunks = buf.chunks_exact_mut(4);
    for c in &mut chunks {
        c[0] ^= m[0];
        c[1] ^= m[1];
        c[2] ^= m[2];
        c[3] ^= m[3];
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(m) {
        *b ^= k;
    }
}

/// Appends a server frame header (unmasked) for a payload of `len` bytes.
pub fn put_header(opcode: OpCode, len: u64, out: &mut BytesMut) {
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    // Writing into memory cannot fail.
    let _ = header.format(len, &mut out.writer());
}

/// The close code for a connection closed for `reason` (when no frame error chose one).
pub fn close_code_for(reason: Reason) -> u16 {
    match reason {
        Reason::ShuttingDown | Reason::Redirected => close::GOING_AWAY,
        Reason::ProtocolError | Reason::EncryptionFailed => close::PROTOCOL_ERROR,
        Reason::SlowConsumer | Reason::TooManyFromAddr | Reason::ServerFull => {
            close::POLICY_VIOLATION
        }
        _ => close::NORMAL,
    }
}

/// The static files of `--web-root`, read once at start (see [`WebRoot::load`]).
#[derive(Debug, Default)]
pub struct WebRoot {
    /// (URL path, content type, body), e.g. ("/dist/web/src/app.js", "text/javascript", ..).
    files: Vec<(String, &'static str, Bytes)>,
}

/// The most bytes `--web-root` may hold: the page is a few hundred KiB.
pub const MAX_WEB_ROOT: u64 = 16 << 20;

/// Why `--web-root` cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum WebRootError {
    #[error("cannot read the web root {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the web root {path} holds more than {MAX_WEB_ROOT} bytes of files: point --web-root at the built page (web/, with dist/, index.html, style.css)")]
    TooBig { path: std::path::PathBuf },
    #[error("the web root {path} has no index.html: point --web-root at the web/ folder of the source (after `npm run build:web` in sdk/js)")]
    NoIndex { path: std::path::PathBuf },
}

impl WebRoot {
    /// Reads `index.html`, `style.css` and everything under `dist/` of `dir` into memory
    /// (files of other types and anything else in `dir` are not served). Symbolic links are
    /// not followed; a path that does not name one of these files is a 404, so `..` reaches
    /// nothing.
    pub fn load(dir: &std::path::Path) -> Result<WebRoot, WebRootError> {
        let mut root = WebRoot::default();
        let mut total = 0u64;
        let read_err = |path: &std::path::Path| {
            let path = path.to_owned();
            move |source| WebRootError::Read { path, source }
        };
        for name in ["index.html", "style.css"] {
            let path = dir.join(name);
            if path.is_file() {
                root.add(dir, &path, &mut total)?;
            }
        }
        if !root.files.iter().any(|(p, _, _)| p == "/index.html") {
            return Err(WebRootError::NoIndex {
                path: dir.to_owned(),
            });
        }
        let mut pending = vec![dir.join("dist")];
        while let Some(folder) = pending.pop() {
            if !folder.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&folder).map_err(read_err(&folder))? {
                let entry = entry.map_err(read_err(&folder))?;
                let kind = entry.file_type().map_err(read_err(&entry.path()))?;
                if kind.is_dir() {
                    pending.push(entry.path());
                } else if kind.is_file() && content_type(&entry.path()).is_some() {
                    root.add(dir, &entry.path(), &mut total)?;
                }
            }
        }
        Ok(root)
    }

    fn add(
        &mut self,
        dir: &std::path::Path,
        path: &std::path::Path,
        total: &mut u64,
    ) -> Result<(), WebRootError> {
        let body = std::fs::read(path).map_err(|source| WebRootError::Read {
            path: path.to_owned(),
            source,
        })?;
        *total += body.len() as u64;
        if *total > MAX_WEB_ROOT {
            return Err(WebRootError::TooBig {
                path: dir.to_owned(),
            });
        }
        let Ok(relative) = path.strip_prefix(dir) else {
            return Ok(());
        };
        let url = format!("/{}", relative.to_string_lossy().replace('\\', "/"));
        let Some(ty) = content_type(path) else {
            return Ok(());
        };
        self.files.push((url, ty, Bytes::from(body)));
        Ok(())
    }

    /// The file for a request path (`/` is `/index.html`; a query string is ignored).
    pub fn get(&self, path: &str) -> Option<(&'static str, &Bytes)> {
        let path = path.split(['?', '#']).next().unwrap_or("/");
        let path = if path == "/" { "/index.html" } else { path };
        self.files
            .iter()
            .find(|(p, _, _)| p == path)
            .map(|(_, ty, body)| (*ty, body))
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// The content type served for a file, by its extension; `None`: not served.
fn content_type(path: &std::path::Path) -> Option<&'static str> {
    Some(match path.extension()?.to_str()? {
        "html" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "map" | "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        _ => return None,
    })
}

/// A whole HTTP/1.1 response with a body, closing the connection.
fn http_response(status: StatusCode, content_type: &str, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(160 + body.len());
    out.put_slice(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             cache-control: no-cache\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.put_slice(body);
    out.freeze()
}

/// The answer to an upgrade request for a WebSocket listener that is full (`SERVER_FULL` on
/// TCP).
pub fn refusal_server_full(message: &str) -> Bytes {
    http_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/plain; charset=utf-8",
        message.as_bytes(),
    )
}

impl Conn {
    /// Whether this is a WebSocket connection past its upgrade.
    pub fn ws_open(&self) -> bool {
        self.has(flag::WS) && self.ws.as_ref().is_none_or(|w| w.upgraded)
    }

    /// Whether this is a WebSocket connection whose upgrade request is still arriving.
    pub fn ws_upgrading(&self) -> bool {
        self.has(flag::WS) && self.ws.as_ref().is_some_and(|w| !w.upgraded)
    }
}

impl Output {
    /// Puts one binary message header in front of the bytes queued since the last one (a
    /// WebSocket connection, just before its socket write, after sealing).
    pub fn frame_ws(&mut self, headers: &mut BytesMut) {
        let from = self.ws_framed;
        if from == self.frames.len() {
            return;
        }
        let len: usize = self.frames.iter().skip(from).map(|f| f.len()).sum();
        put_header(OpCode::Data(Data::Binary), len as u64, headers);
        self.insert_wire(from, headers.split().freeze());
    }

    /// Queues a control frame (or an HTTP response, with `opcode` `None`) for the wire, after
    /// everything queued so far, which must be framed already.
    pub fn push_ws_raw(&mut self, bytes: Bytes) {
        debug_assert_eq!(self.ws_framed, self.frames.len());
        let at = self.frames.len();
        self.insert_wire(at, bytes);
    }
}

impl Shard {
    /// Bytes read from a WebSocket connection: its upgrade request, then frames whose payload
    /// goes to the Courier stream.
    pub(super) fn on_ws_bytes(&mut self, slot: usize, data: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let mut ws = conn.ws.take().map_or_else(WsFrames::open, |b| *b);
        let mut data = data;
        if !ws.upgraded {
            match self.on_upgrade_request(slot, &mut ws, data) {
                Some(used) => data = &mut data[used..],
                None => {
                    self.keep_ws(slot, ws);
                    return;
                }
            }
        }
        let mut pos = 0;
        while pos < data.len() {
            let Some(conn) = self.conns.get(slot).filter(|c| !c.closing()) else {
                break;
            };
            let limit = self.ws_message_limit(conn);
            match ws.next(data, &mut pos, limit) {
                Ok(None) => break,
                Ok(Some(Event::Data(chunk))) => self.on_bytes(slot, chunk),
                Ok(Some(Event::Ping(payload))) => {
                    self.ws_alive(slot);
                    if self.ws_ping_allowed(slot) {
                        self.ws_control(slot, Control::Pong, payload.as_slice());
                    }
                }
                Ok(Some(Event::Pong)) => self.ws_alive(slot),
                Ok(Some(Event::Close(code))) => {
                    ws.close_code = Some(code.unwrap_or(close::NORMAL));
                    self.close_soon(slot, Reason::PeerClosed);
                }
                Err(e) => {
                    tracing::debug!(shard = self.id, error = %e, "closing a WebSocket connection");
                    ws.close_code = Some(e.close_code());
                    self.reply_error(slot, 0, e.error_code(), &e.to_string());
                    self.close_soon(slot, Reason::ProtocolError);
                }
            }
        }
        self.keep_ws(slot, ws);
    }

    /// Puts a connection's WebSocket state back, boxed only if it holds anything.
    fn keep_ws(&mut self, slot: usize, ws: WsFrames) {
        if let Some(conn) = self.conns.get_mut(slot) {
            if !ws.is_idle() {
                conn.ws = Some(Box::new(ws));
            }
        }
    }

    /// The longest data message the connection may send now: its largest frame or record.
    fn ws_message_limit(&self, conn: &Conn) -> u64 {
        let authed = conn.state == State::Authed;
        let limit = match (&conn.crypto, authed) {
            (Crypto::Plain, false) => PRE_AUTH_MAX_FRAME as usize + LEN_BYTES,
            (Crypto::Plain, true) => self.decoder.max_frame_len() as usize + LEN_BYTES,
            (_, false) => PRE_AUTH_MAX_RECORD + courier_protocol::noise::LEN_BYTES,
            (_, true) => MAX_RECORD_LEN + courier_protocol::noise::LEN_BYTES,
        };
        limit as u64
    }

    /// A ping or pong: the connection is alive, as after a Courier `PING`.
    fn ws_alive(&mut self, slot: usize) {
        let now = self.now_secs();
        if let Some(conn) = self.conns.get_mut(slot) {
            if conn.state == State::Authed {
                conn.last_frame = now;
            }
        }
    }

    /// Whether a ping may be answered: after `HELLO` it takes a token of the connection's rate
    /// bucket, as a `PING` frame does, so a ping flood costs no more than a `PING` flood; a
    /// ping over the rate gets no pong (counted as rate limited).
    fn ws_ping_allowed(&mut self, slot: usize) -> bool {
        let (now_ms, rate, burst) = (self.now_ms(), self.core.config.rate_limit, self.burst());
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        if conn.state == State::AwaitHello || conn.rate.take(rate, burst, now_ms) {
            return true;
        }
        ShardMetrics::add(&self.metrics().rate_limited, 1);
        false
    }

    /// Queues a control frame after everything queued so far (sealed and framed first).
    fn ws_control(&mut self, slot: usize, control: Control, payload: &[u8]) {
        if !self.seal_output(slot) || !self.ws_before_write(slot) {
            return;
        }
        let mut frame = std::mem::take(&mut self.ws_headers);
        put_header(OpCode::Control(control), payload.len() as u64, &mut frame);
        frame.put_slice(payload);
        let bytes = frame.split().freeze();
        self.ws_headers = frame;
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.ws.as_ref().is_some_and(|w| w.close_sent) {
            return;
        }
        let out = conn.output.get_or_insert_with(Box::default);
        out.push_ws_raw(bytes);
        let queued = out.queued;
        self.want_write(slot);
        if queued > self.core.config.max_output {
            self.slow_consumer(slot, queued);
        }
    }

    /// Frames what a WebSocket connection queued (after sealing it) and, once it is closing,
    /// queues the close frame; called just before the socket write. False if the connection
    /// is gone or failed.
    pub(super) fn ws_before_write(&mut self, slot: usize) -> bool {
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        if conn.output.is_some() {
            let mut headers = std::mem::take(&mut self.ws_headers);
            if let Some(out) = conn.output.as_mut() {
                out.frame_ws(&mut headers);
            }
            self.ws_headers = headers;
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        if !conn.closing() || conn.ws.as_ref().is_some_and(|w| w.close_sent) {
            return true;
        }
        let code = conn
            .ws
            .as_ref()
            .and_then(|w| w.close_code)
            .unwrap_or_else(|| close_code_for(conn.close_reason));
        let mut frame = std::mem::take(&mut self.ws_headers);
        put_header(OpCode::Control(Control::Close), 2, &mut frame);
        frame.put_u16(code);
        let bytes = frame.split().freeze();
        self.ws_headers = frame;
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        conn.output
            .get_or_insert_with(Box::default)
            .push_ws_raw(bytes);
        conn.ws
            .get_or_insert_with(|| Box::new(WsFrames::open()))
            .close_sent = true;
        true
    }

    /// Collects the upgrade request in [`Conn::input`] and answers it once whole: the
    /// upgrade (returns how many bytes of `data` the request took; the rest are frames), a
    /// static file of `--web-root` for a plain GET, or a refusal (`None`, the connection
    /// closing). `None` too while the request is incomplete.
    fn on_upgrade_request(&mut self, slot: usize, ws: &mut WsFrames, data: &[u8]) -> Option<usize> {
        let conn = self.conns.get_mut(slot)?;
        let held = conn.input.len();
        let take = data.len().min(MAX_UPGRADE_REQUEST - held);
        conn.input.extend_from_slice(&data[..take]);
        let request = match Request::try_parse(&conn.input) {
            Ok(Some((len, request))) => {
                conn.input = Vec::new();
                (request, len - held)
            }
            Ok(None) if conn.input.len() < MAX_UPGRADE_REQUEST => return None,
            Ok(None) => {
                self.refuse_upgrade(
                    slot,
                    WsRefusal::TooLarge,
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "the upgrade request is over 4096 bytes: send fewer or shorter headers",
                );
                return None;
            }
            Err(e) => {
                let text = format!("not a valid HTTP GET request ({e}): open a WebSocket here");
                self.refuse_upgrade(slot, WsRefusal::BadRequest, StatusCode::BAD_REQUEST, &text);
                return None;
            }
        };
        let (request, used) = request;
        let headers = request.headers();
        let wants_upgrade = headers.contains_key("upgrade");
        if !wants_upgrade {
            self.serve_page(slot, request.uri().path());
            return None;
        }
        let origins = &self.core.config.ws_allowed_origins;
        if !origins.is_empty() {
            let origin = headers.get("origin").and_then(|o| o.to_str().ok());
            if !origin.is_some_and(|o| origins.iter().any(|a| a == o)) {
                let text = format!(
                    "the origin {} may not open WebSocket connections here: the operator lists \
                     allowed origins with --ws-allowed-origin",
                    origin.unwrap_or("(none)")
                );
                self.refuse_upgrade(slot, WsRefusal::Origin, StatusCode::FORBIDDEN, &text);
                return None;
            }
        }
        let mut response: Response<()> = match create_response(&request) {
            Ok(r) => r,
            Err(e) => {
                let text = format!("not a valid WebSocket upgrade ({e})");
                self.refuse_upgrade(slot, WsRefusal::BadRequest, StatusCode::BAD_REQUEST, &text);
                return None;
            }
        };
        let offered = headers
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == SUBPROTOCOL);
        if offered {
            response.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        let mut bytes = Vec::with_capacity(192);
        // Writing into memory cannot fail.
        let _ = write_response(&mut bytes, &response);
        self.queue_http(slot, Bytes::from(bytes));
        ws.upgraded = true;
        Some(used)
    }

    /// Answers a plain GET: a file of `--web-root`, 404, or 426 without a web root.
    fn serve_page(&mut self, slot: usize, path: &str) {
        let response = match &self.core.web_root {
            Some(root) => match root.get(path) {
                Some((ty, body)) => http_response(StatusCode::OK, ty, body),
                None => http_response(
                    StatusCode::NOT_FOUND,
                    "text/plain; charset=utf-8",
                    b"not found",
                ),
            },
            None => http_response(
                StatusCode::UPGRADE_REQUIRED,
                "text/plain; charset=utf-8",
                b"this port speaks Courier over WebSocket (protocol/PROTOCOL.md); it serves no \
                  page unless the server runs with --web-root",
            ),
        };
        self.queue_http(slot, response);
        self.close_soon(slot, Reason::PageServed);
    }

    /// Refuses an upgrade with an HTTP status and a sentence, counted by reason.
    fn refuse_upgrade(&mut self, slot: usize, why: WsRefusal, status: StatusCode, text: &str) {
        tracing::debug!(
            shard = self.id,
            reason = why.name(),
            "refused a WebSocket upgrade"
        );
        self.metrics().ws_refused(why);
        let response = http_response(status, "text/plain; charset=utf-8", text.as_bytes());
        self.queue_http(slot, response);
        self.close_soon(slot, Reason::WsRefused);
    }

    /// Queues bytes of HTTP (before the upgrade), which no WebSocket framing wraps.
    fn queue_http(&mut self, slot: usize, bytes: Bytes) {
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.output
                .get_or_insert_with(Box::default)
                .push_ws_raw(bytes);
            self.want_write(slot);
        }
    }

    /// Counts a WebSocket connection's end (the gauge, and an upgrade that timed out).
    pub(super) fn ws_closed(&self, conn: &Conn) {
        let m = self.metrics();
        ShardMetrics::sub(&m.ws_connections, 1);
        if conn.ws_upgrading() && conn.close_reason == Reason::HandshakeTimeout {
            m.ws_refused(WsRefusal::Timeout);
        }
    }

    /// Whether `listener` is a WebSocket listener.
    pub(super) fn is_ws_listener(&self, listener: usize) -> bool {
        listener >= self.first_ws
    }

    /// A new connection on a WebSocket listener: its upgrade comes first.
    pub(super) fn ws_accepted(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.flags |= flag::WS;
            conn.ws = Some(Box::new(WsFrames::upgrading()));
            ShardMetrics::add(&self.metrics().ws_connections, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: header (masked), payload masked with `mask`.
    fn client_frame(opcode: OpCode, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let header = FrameHeader {
            is_final: fin,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: Some(mask),
        };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        let mut body = payload.to_vec();
        unmask(&mut body, mask, 0);
        out.extend_from_slice(&body);
        out
    }

    /// Feeds `wire` in pieces of `split` bytes; returns the data and the other events.
    fn decode(wire: &[u8], split: usize, limit: u64) -> Result<(Vec<u8>, Vec<String>), WsError> {
        let mut ws = WsFrames::open();
        let (mut data, mut events) = (Vec::new(), Vec::new());
        for piece in wire.chunks(split) {
            let mut piece = piece.to_vec();
            let mut pos = 0;
            while let Some(event) = ws.next(&mut piece, &mut pos, limit)? {
                match event {
                    Event::Data(d) => data.extend_from_slice(d),
                    other => events.push(format!("{other:?}")),
                }
            }
            assert_eq!(pos, piece.len(), "every byte is used or held");
        }
        assert!(ws.is_idle(), "nothing is left between messages");
        Ok((data, events))
    }

    #[test]
    fn frames_decode_in_any_split() {
        let mut wire = client_frame(OpCode::Data(Data::Binary), false, b"hello ", [1, 2, 3, 4]);
        wire.extend(client_frame(
            OpCode::Control(Control::Ping),
            true,
            b"p",
            [9, 9, 9, 9],
        ));
        wire.extend(client_frame(
            OpCode::Data(Data::Continue),
            true,
            &[7u8; 300],
            [5, 6, 7, 8],
        ));
        wire.extend(client_frame(OpCode::Data(Data::Binary), true, b"", [0; 4]));
        let mut expected = b"hello ".to_vec();
        expected.extend([7u8; 300]);
        for split in [1, 2, 3, 5, 13, 14, 64, 1000] {
            let (data, events) = decode(&wire, split, 1000).unwrap();
            assert_eq!(data, expected, "split {split}");
            assert_eq!(events, vec!["Ping([112])"], "split {split}");
        }
    }

    #[test]
    fn text_unmasked_oversize_and_stray_continuations_are_refused() {
        let text = client_frame(OpCode::Data(Data::Text), true, b"hi", [1; 4]);
        assert!(matches!(decode(&text, 100, 100), Err(WsError::Text)));
        let mut unmasked = Vec::new();
        FrameHeader::default()
            .format(0, &mut unmasked)
            .expect("format");
        assert!(matches!(
            decode(&unmasked, 100, 100),
            Err(WsError::Unmasked)
        ));
        let big = client_frame(OpCode::Data(Data::Binary), false, &[0; 60], [1; 4]);
        let mut two = big.clone();
        two.extend(client_frame(
            OpCode::Data(Data::Continue),
            true,
            &[0; 60],
            [1; 4],
        ));
        let err = decode(&two, 7, 100).unwrap_err();
        assert!(
            matches!(
                err,
                WsError::TooBig {
                    len: 120,
                    limit: 100
                }
            ),
            "{err}"
        );
        assert_eq!(err.close_code(), close::MESSAGE_TOO_BIG);
        let stray = client_frame(OpCode::Data(Data::Continue), true, b"x", [1; 4]);
        assert!(matches!(decode(&stray, 100, 100), Err(WsError::Frame(_))));
    }

    #[test]
    fn the_output_gets_one_header_before_the_round_and_none_before_the_http_response() {
        let mut out = Output::default();
        let mut headers = BytesMut::new();
        out.push_ws_raw(Bytes::from_static(b"HTTP/1.1 101\r\n\r\n"));
        out.push(Bytes::from_static(b"abc"));
        out.push(Bytes::from_static(b"defg"));
        out.frame_ws(&mut headers);
        out.frame_ws(&mut headers);
        let mut slices = [std::io::IoSlice::new(&[]); 8];
        let n = out.slices(&mut slices);
        let wire: Vec<u8> = slices[..n].iter().flat_map(|s| s.to_vec()).collect();
        let mut expected = b"HTTP/1.1 101\r\n\r\n".to_vec();
        expected.extend([0x82, 7]);
        expected.extend(b"abcdefg");
        assert_eq!(wire, expected);
        assert_eq!(
            out.queued,
            expected.len(),
            "the header counts against --max-output"
        );
    }
}
