//! The WebSocket frame codec of the server, sans I/O (RFC 6455 section 5): client frames are
//! decoded with tungstenite's [`FrameHeader::parse`] and unmasked in place in the caller's
//! buffer; only what is incomplete (a header, the rest of a frame and its mask, a control
//! payload, the length of a fragmented message) is kept in [`WsFrames`].

use std::io::Cursor;

use bytes::{BufMut, BytesMut};
use courier_protocol::ErrorCode;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

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
/// [`Busy::ws`], dropped between messages.
#[derive(Clone)]
pub struct WsFrames {
    /// The upgrade is done; before, the request arrives in [`Busy::input`].
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

    /// An upgraded connection between messages (what `Busy::ws == None` means).
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
}
