//! WebSocket under a connection's byte stream (`--ws`, PROTOCOL.md section 1.2), driven by
//! the worker's mio loop: tungstenite makes the upgrade request and parses the response and
//! the frame headers; the payload of the server's binary messages goes to the session as TCP
//! bytes would, and what the session wrote goes out as one masked binary message per write.

use std::io::Cursor;

use bytes::{BufMut, BytesMut};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::{generate_request, Response};
use tungstenite::handshake::derive_accept_key;
use tungstenite::handshake::machine::TryParse;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The longest upgrade response the loadgen waits for.
const MAX_RESPONSE: usize = 4096;

/// One connection's WebSocket state (boxed in the connection while it is connected).
pub struct WsLink {
    /// The `Sec-WebSocket-Accept` the server must answer; `None` once upgraded.
    expect_accept: Option<String>,
    response: Vec<u8>,
    header: [u8; 14],
    header_len: u8,
    /// Payload bytes of the current server frame not yet arrived, and whether it is data.
    remaining: u64,
    data: bool,
    /// Bytes at the front of the connection's write buffer that are already wire bytes (the
    /// upgrade request, framed messages).
    pub framed: usize,
}

/// What a piece of the server's bytes held.
pub enum Piece<'a> {
    /// Courier stream bytes.
    Data(&'a [u8]),
    /// The server's close frame (or a refusal of the upgrade).
    Closed,
}

impl WsLink {
    /// Starts the upgrade to `server`: its request goes first in `wbuf`.
    pub fn start(server: std::net::SocketAddr, wbuf: &mut BytesMut) -> Result<WsLink, String> {
        let request = format!("ws://{server}/")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let (bytes, key) = generate_request(request).map_err(|e| e.to_string())?;
        wbuf.put_slice(&bytes);
        Ok(WsLink {
            expect_accept: Some(derive_accept_key(key.as_bytes())),
            response: Vec::new(),
            header: [0; 14],
            header_len: 0,
            remaining: 0,
            data: false,
            framed: wbuf.len(),
        })
    }

    /// The next piece of `data[*pos..]`: the upgrade response is checked first; `Ok(None)`
    /// once `data` is used up.
    pub fn next<'a>(
        &mut self,
        data: &'a [u8],
        pos: &mut usize,
    ) -> Result<Option<Piece<'a>>, String> {
        while *pos < data.len() {
            if let Some(accept) = &self.expect_accept {
                let take = (data.len() - *pos).min(MAX_RESPONSE - self.response.len());
                let held = self.response.len();
                self.response.extend_from_slice(&data[*pos..*pos + take]);
                match Response::try_parse(&self.response).map_err(|e| e.to_string())? {
                    None if self.response.len() >= MAX_RESPONSE => {
                        return Err("the upgrade response is over 4 KiB".into())
                    }
                    None => {
                        *pos += take;
                        continue;
                    }
                    Some((len, response)) => {
                        let ok = response.status() == 101
                            && response
                                .headers()
                                .get("sec-websocket-accept")
                                .is_some_and(|v| v.as_bytes() == accept.as_bytes());
                        if !ok {
                            return Err(format!(
                                "the server refused the upgrade: {}",
                                response.status()
                            ));
                        }
                        *pos += len - held;
                        self.expect_accept = None;
                        self.response = Vec::new();
                        continue;
                    }
                }
            }
            if self.remaining > 0 {
                let n = self.remaining.min((data.len() - *pos) as u64) as usize;
                self.remaining -= n as u64;
                *pos += n;
                if self.data {
                    return Ok(Some(Piece::Data(&data[*pos - n..*pos])));
                }
                continue;
            }
            let held = self.header_len as usize;
            let take = (self.header.len() - held).min(data.len() - *pos);
            self.header[held..held + take].copy_from_slice(&data[*pos..*pos + take]);
            let mut cursor = Cursor::new(&self.header[..held + take]);
            let Some((header, len)) = FrameHeader::parse(&mut cursor).map_err(|e| e.to_string())?
            else {
                self.header_len = (held + take) as u8;
                *pos += take;
                continue;
            };
            *pos += cursor.position() as usize - held;
            self.header_len = 0;
            self.remaining = len;
            match header.opcode {
                OpCode::Data(Data::Binary | Data::Continue) => self.data = true,
                OpCode::Control(Control::Close) => {
                    self.data = false;
                    return Ok(Some(Piece::Closed));
                }
                OpCode::Control(_) => self.data = false,
                OpCode::Data(_) => return Err("the server sent a text message".into()),
            }
        }
        Ok(None)
    }

    /// Whether the server accepted the upgrade: frames may go out (RFC 6455 section 4.1).
    pub fn upgraded(&self) -> bool {
        self.expect_accept.is_none()
    }

    /// Wraps what was written to `wbuf` after the framed bytes in one masked binary message.
    pub fn frame(&mut self, wbuf: &mut BytesMut, mask: [u8; 4]) {
        if wbuf.len() == self.framed || !self.upgraded() {
            return;
        }
        let len = wbuf.len() - self.framed;
        let header = FrameHeader {
            is_final: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode: OpCode::Data(Data::Binary),
            mask: Some(mask),
        };
        // Room for the header in front of the payload, in place: no allocation in steady
        // state, one move of the payload.
        let header_len = header.len(len as u64);
        let start = self.framed;
        wbuf.resize(wbuf.len() + header_len, 0);
        wbuf.copy_within(start..start + len, start + header_len);
        let mut at = &mut wbuf[start..start + header_len];
        // Writing into memory cannot fail.
        let _ = header.format(len as u64, &mut at);
        let mut chunks = wbuf[start + header_len..].chunks_exact_mut(4);
        for c in &mut chunks {
            c[0] ^= mask[0];
            c[1] ^= mask[1];
            c[2] ^= mask[2];
            c[3] ^= mask[3];
        }
        for (b, m) in chunks.into_remainder().iter_mut().zip(mask) {
            *b ^= m;
        }
        self.framed = wbuf.len();
    }

    /// `n` bytes of the write buffer were written.
    pub fn written(&mut self, n: usize) {
        self.framed = self.framed.saturating_sub(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_masked_and_server_frames_decode_in_any_split() {
        let mut wbuf = BytesMut::new();
        let mut link = WsLink::start("127.0.0.1:1".parse().unwrap(), &mut wbuf).unwrap();
        let request_len = wbuf.len();
        wbuf.put_slice(b"abcde");
        link.frame(&mut wbuf, [1, 2, 3, 4]);
        assert_eq!(
            link.framed, request_len,
            "nothing is framed before the upgrade"
        );
        let accept = link.expect_accept.take().unwrap();
        link.frame(&mut wbuf, [1, 2, 3, 4]);
        assert_eq!(&wbuf[request_len..request_len + 2], &[0x82, 0x80 | 5]);
        assert_eq!(&wbuf[request_len + 2..request_len + 6], &[1, 2, 3, 4]);
        assert_eq!(wbuf[request_len + 6], b'a' ^ 1);
        assert_eq!(link.framed, wbuf.len());

        let mut server = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        server.extend([0x82, 3]);
        server.extend(b"xyz");
        server.extend([0x8A, 1, b'p']);
        server.extend([0x82, 2]);
        server.extend(b"uv");
        server.extend([0x88, 2, 0x03, 0xE8]);
        for split in [1, 2, 5, 1000] {
            let mut link =
                WsLink::start("127.0.0.1:1".parse().unwrap(), &mut BytesMut::new()).unwrap();
            link.expect_accept = Some(accept.clone());
            let (mut got, mut closed) = (Vec::new(), false);
            for piece in server.chunks(split) {
                let mut pos = 0;
                while let Some(p) = link.next(piece, &mut pos).unwrap() {
                    match p {
                        Piece::Data(d) => got.extend_from_slice(d),
                        Piece::Closed => closed = true,
                    }
                }
            }
            assert_eq!(got, b"xyzuv", "split {split}");
            assert!(closed);
        }
    }
}
