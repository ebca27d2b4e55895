//! Framing: a length prefix, then the frame.
//!
//! ```text
//!  0               4       5               9
//! +---------------+-------+---------------+--------------------------+
//! |  len (u32 BE) | type  | request id    | body (len - 5 bytes)     |
//! |               | (u8)  | (u32 BE)      |                          |
//! +---------------+-------+---------------+--------------------------+
//! ```
//!
//! `len` counts the bytes after itself. It is checked against the limit before any of the body
//! is buffered; decode returns `Ok(None)` until a whole frame is there.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{Error, Frame};

/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;
/// Bytes of type code and request id, counted in `len`.
pub const HEADER_BYTES: usize = 5;
/// The largest `len` any peer may send or accept; a server may set a lower limit.
pub const MAX_FRAME_LEN: u32 = 1 << 20;
/// The default limit, and the one a server announces in `WELCOME` unless configured.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 64 * 1024;

/// A frame with its request id: the request's own id, its response's, or 0 for a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub request_id: u32,
    pub frame: Frame,
}

impl Envelope {
    pub fn new(request_id: u32, frame: impl Into<Frame>) -> Self {
        Self {
            request_id,
            frame: frame.into(),
        }
    }

    /// A server push (request id 0).
    pub fn push(frame: impl Into<Frame>) -> Self {
        Self::new(0, frame)
    }
}

/// Appends one frame to `buf`, reserving once.
pub fn encode(request_id: u32, frame: &Frame, buf: &mut BytesMut) {
    let body = frame.body_size();
    buf.reserve(LEN_BYTES + HEADER_BYTES + body);
    buf.put_u32((HEADER_BYTES + body) as u32);
    buf.put_u8(frame.code());
    buf.put_u32(request_id);
    frame.put_body(buf);
}

/// The length of the frame at the front of `buf` if its header is there; checks the limit.
/// Exposed so a server can drop an oversize frame before reading its body.
pub fn peek_len(buf: &[u8], max: u32) -> Result<Option<u32>, Error> {
    if buf.len() < LEN_BYTES {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len > max {
        return Err(Error::FrameTooLarge { len, max });
    }
    if (len as usize) < HEADER_BYTES {
        return Err(Error::FrameTooShort { len });
    }
    Ok(Some(len))
}

/// Decodes frames from a growing buffer.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    max_frame_len: u32,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl Decoder {
    /// `max_frame_len` is clamped to [`MAX_FRAME_LEN`].
    pub fn new(max_frame_len: u32) -> Self {
        Self {
            max_frame_len: max_frame_len.min(MAX_FRAME_LEN),
        }
    }

    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Takes one whole frame off the front of `buf`, or returns `Ok(None)` (reserving room for
    /// the rest of a frame whose header has arrived) when more bytes are needed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Envelope>, Error> {
        let Some(len) = peek_len(buf, self.max_frame_len)? else {
            return Ok(None);
        };
        let total = LEN_BYTES + len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(LEN_BYTES);
        let mut frame = buf.split_to(len as usize);
        let code = frame.get_u8();
        let request_id = frame.get_u32();
        let frame = Frame::decode_body(code, frame.freeze())?;
        Ok(Some(Envelope { request_id, frame }))
    }
}

/// Decodes `bytes` holding exactly one whole encoded frame (a frame carried inside another,
/// as node-to-node `FORWARD` does), without copying its body. Bytes past the frame's length
/// are an error here: the carrier says where the frame ends.
pub fn decode_one(mut bytes: Bytes, max_frame_len: u32) -> Result<Envelope, Error> {
    let len = peek_len(&bytes, max_frame_len)?.ok_or(Error::Truncated { field: "frame" })?;
    if bytes.len() != LEN_BYTES + len as usize {
        return Err(Error::Truncated { field: "frame" });
    }
    bytes.advance(LEN_BYTES);
    let code = bytes.get_u8();
    let request_id = bytes.get_u32();
    let frame = Frame::decode_body(code, bytes)?;
    Ok(Envelope { request_id, frame })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hello, Logout, Ping};

    #[test]
    fn decode_one_takes_exactly_one_whole_frame() {
        let mut buf = BytesMut::new();
        encode(7, &Ping { nonce: 1 }.into(), &mut buf);
        let whole = buf.split().freeze();
        let env = decode_one(whole.clone(), MAX_FRAME_LEN).unwrap();
        assert_eq!((env.request_id, env.frame), (7, Ping { nonce: 1 }.into()));
        assert!(decode_one(whole.slice(..whole.len() - 1), MAX_FRAME_LEN).is_err());
        let mut longer = BytesMut::from(&whole[..]);
        longer.extend_from_slice(&[0]);
        assert!(decode_one(longer.freeze(), MAX_FRAME_LEN).is_err());
    }

    #[test]
    fn encode_writes_the_length_type_and_request_id() {
        let mut buf = BytesMut::new();
        encode(7, &Ping { nonce: 1 }.into(), &mut buf);
        assert_eq!(
            &buf[..],
            [0, 0, 0, 13, 0x07, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        buf.clear();
        encode(1, &Logout {}.into(), &mut buf);
        assert_eq!(&buf[..], [0, 0, 0, 5, 0x05, 0, 0, 0, 1]);
    }

    #[test]
    fn peek_len_checks_both_bounds() {
        assert_eq!(peek_len(&[0, 0, 0], 100), Ok(None));
        assert_eq!(peek_len(&[0, 0, 0, 5], 100), Ok(Some(5)));
        assert_eq!(peek_len(&[0, 0, 0, 100], 100), Ok(Some(100)));
        assert_eq!(
            peek_len(&[0, 0, 0, 101], 100),
            Err(Error::FrameTooLarge { len: 101, max: 100 })
        );
        assert_eq!(
            peek_len(&[0, 0, 0, 4], 100),
            Err(Error::FrameTooShort { len: 4 })
        );
    }

    #[test]
    fn limit_is_clamped_to_the_ceiling() {
        assert_eq!(Decoder::new(u32::MAX).max_frame_len(), MAX_FRAME_LEN);
        assert_eq!(Decoder::default().max_frame_len(), DEFAULT_MAX_FRAME_LEN);
    }

    #[test]
    fn a_frame_at_the_limit_is_accepted_and_reserved_for() {
        let mut buf = BytesMut::from(&DEFAULT_MAX_FRAME_LEN.to_be_bytes()[..]);
        assert_eq!(Decoder::default().decode(&mut buf), Ok(None));
        assert!(buf.capacity() >= LEN_BYTES + DEFAULT_MAX_FRAME_LEN as usize);
    }

    #[test]
    fn header_of_two_gib_is_rejected_without_buffering() {
        let mut buf = BytesMut::from(&[0x80, 0, 0, 0][..]);
        let before = buf.capacity();
        assert_eq!(
            Decoder::default().decode(&mut buf),
            Err(Error::FrameTooLarge {
                len: 1 << 31,
                max: DEFAULT_MAX_FRAME_LEN
            })
        );
        assert_eq!(buf.capacity(), before);
    }

    #[test]
    fn byte_by_byte_then_two_frames_at_once() {
        let mut wire = BytesMut::new();
        encode(
            1,
            &Hello {
                version: 1,
                client: "c".into(),
            }
            .into(),
            &mut wire,
        );
        encode(2, &Ping { nonce: 9 }.into(), &mut wire);
        let decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in &wire[..] {
            buf.extend_from_slice(&[b]);
            if let Some(e) = decoder.decode(&mut buf).unwrap() {
                got.push(e);
            }
        }
        let mut whole = wire.clone();
        let first = decoder.decode(&mut whole).unwrap().unwrap();
        let second = decoder.decode(&mut whole).unwrap().unwrap();
        assert_eq!(decoder.decode(&mut whole), Ok(None));
        assert_eq!(got, [first.clone(), second.clone()]);
        assert_eq!(
            first,
            Envelope::new(
                1,
                Hello {
                    version: 1,
                    client: "c".into()
                }
            )
        );
        assert_eq!(second, Envelope::new(2, Ping { nonce: 9 }));
    }
}
