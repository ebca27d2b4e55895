//! WebSocket (RFC 6455) under the Courier byte stream, on the shard's own loop (`--listen-ws`).
//!
//! A WebSocket connection is a [`Conn`] like any other, with [`flag::WS`] set: the same
//! slab, wheel, limits, rate bucket and slow-consumer rule. Only the layer under the stream
//! differs:
//!
//! ```text
//!  accept (WS listener) -> upgrade request held in Busy::input (at most 4 KiB, within the
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
//! is boxed in [`Busy::ws`] only while a frame or a fragmented message is incomplete, during
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

mod frames;
mod web_root;

use bytes::{BufMut, Bytes, BytesMut};
use courier_protocol::noise::MAX_RECORD_LEN;
use courier_protocol::LEN_BYTES;
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};
use tungstenite::http::{HeaderValue, Response, StatusCode};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

pub use frames::{close, put_header, ControlPayload, Event, WsError, WsFrames};
pub use web_root::{WebRoot, WebRootError, MAX_WEB_ROOT};

use super::conn::{flag, Conn, Crypto, Output, State};
use super::io::{PRE_AUTH_MAX_FRAME, PRE_AUTH_MAX_RECORD};
use super::Shard;
use crate::metrics::{Reason, ShardMetrics, WsRefusal};

/// The longest upgrade request (request line and headers) a client may send.
pub const MAX_UPGRADE_REQUEST: usize = 4096;

/// The subprotocol the server agrees to when a client offers it (`Sec-WebSocket-Protocol`).
/// Optional: a client that offers none is served the same.
pub const SUBPROTOCOL: &str = "courier.v1";

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
        self.has(flag::WS) && self.ws().is_none_or(|w| w.upgraded)
    }

    /// Whether this is a WebSocket connection whose upgrade request is still arriving.
    pub fn ws_upgrading(&self) -> bool {
        self.has(flag::WS) && self.ws().is_some_and(|w| !w.upgraded)
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
        let mut ws = conn.take_ws().map_or_else(WsFrames::open, |b| *b);
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
                *conn.ws_or(WsFrames::open) = ws;
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
        if conn.ws().is_some_and(|w| w.close_sent) {
            return;
        }
        let out = conn.output_or_new();
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
        if conn.output().is_some() {
            let mut headers = std::mem::take(&mut self.ws_headers);
            if let Some(out) = conn.output_mut() {
                out.frame_ws(&mut headers);
            }
            self.ws_headers = headers;
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        if !conn.closing() || conn.ws().is_some_and(|w| w.close_sent) {
            return true;
        }
        let code = conn
            .ws()
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
        conn.output_or_new().push_ws_raw(bytes);
        conn.ws_or(WsFrames::open).close_sent = true;
        true
    }

    /// Collects the upgrade request in [`Busy::input`] and answers it once whole: the
    /// upgrade (returns how many bytes of `data` the request took; the rest are frames), a
    /// static file of `--web-root` for a plain GET, or a refusal (`None`, the connection
    /// closing). `None` too while the request is incomplete.
    fn on_upgrade_request(&mut self, slot: usize, ws: &mut WsFrames, data: &[u8]) -> Option<usize> {
        let conn = self.conns.get_mut(slot)?;
        let input = conn.input_mut();
        let held = input.len();
        let take = data.len().min(MAX_UPGRADE_REQUEST - held);
        input.extend_from_slice(&data[..take]);
        let request = match Request::try_parse(input) {
            Ok(Some((len, request))) => {
                *input = Vec::new();
                (request, len - held)
            }
            Ok(None) if input.len() < MAX_UPGRADE_REQUEST => return None,
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
            conn.output_or_new().push_ws_raw(bytes);
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
            *conn.ws_or(WsFrames::upgrading) = WsFrames::upgrading();
            ShardMetrics::add(&self.metrics().ws_connections, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
