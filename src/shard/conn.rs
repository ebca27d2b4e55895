//! One client connection as a shard holds it, sized for millions of idle ones.
//!
//! An idle authenticated connection holds its socket, its identity, a deadline and a rate
//! bucket: no read buffer (frames are read into the shard's scratch buffer and only a partial
//! frame is kept, see [`Busy::input`]) and no write buffer ([`Busy::output`] exists only while
//! bytes wait for the socket); the two and the WebSocket frame state share one box,
//! [`Conn::busy`], that exists only while any of them holds anything. `size_of::<Conn>()` is
//! checked by a test below.
//!
//! Encryption ([`Crypto`], NOISE.md) costs an idle connection 88 bytes: the
//! 80-byte Noise [`Transport`] (two keys, two nonces) and the length of the decrypted part of
//! [`Busy::input`]. The handshake's state is boxed while it runs and freed when it ends.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Bytes, BytesMut};
use courier_protocol::noise::{self, Handshake, Transport};
use mio::net::TcpStream;

use super::ws::WsFrames;
use crate::metrics::Reason;
use crate::session::TokenDigest;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Accepted; the first frame must be `HELLO`.
    AwaitHello,
    /// Said hello; may register, log in, resume or ping.
    AwaitAuth,
    /// A `REGISTER` or `LOGIN` is with the auth workers.
    Authenticating,
    Authed,
}

/// Flag bits of [`Conn::flags`].
pub mod flag {
    /// The handler decided to close; the loop closes after this round's writes.
    pub const CLOSING: u8 = 1;
    /// Registered for WRITABLE because the socket refused bytes.
    pub const WRITABLE: u8 = 2;
    /// Queued in the shard's pending-write list this round.
    pub const PENDING_WRITE: u8 = 4;
    /// Has presence subscriptions to drop on close.
    pub const SUBSCRIBED: u8 = 8;
    pub const ADMIN: u8 = 16;
    /// Not read while the shard its requests go to is congested (backpressure).
    pub const PAUSED: u8 = 32;
    /// Accepted on a `--listen-ws` listener: WebSocket under the stream (see `ws/`).
    pub const WS: u8 = 64;
}

/// The layer under the frames.
pub enum Crypto {
    /// `--insecure-plaintext`: frames straight on TCP.
    Plain,
    /// The Noise handshake runs (it is bounded by the handshake deadline); its state is
    /// dropped when it ends.
    Handshaking(Box<Handshake>),
    /// Records. The first `held_plain` bytes of [`Busy::input`] are decrypted plaintext (the
    /// start of a frame, or frames held while reads are paused); the rest is the start of a
    /// record whose end has not arrived.
    Open {
        transport: Transport,
        held_plain: u32,
    },
}

impl Crypto {
    /// Bytes at the front of [`Busy::input`] that are plaintext frames.
    pub fn held_plain(&self, input: &[u8]) -> usize {
        match self {
            Crypto::Plain => input.len(),
            Crypto::Handshaking(_) => 0,
            Crypto::Open { held_plain, .. } => *held_plain as usize,
        }
    }
}

pub struct Conn {
    pub stream: TcpStream,
    /// Distinguishes this connection from earlier ones in the same slab slot.
    pub gen: u32,
    pub state: State,
    pub flags: u8,
    /// Its client address's key in [`PerAddr`](super::per_addr::PerAddr), given back on close.
    pub addr_key: u32,
    /// Why the connection is closing, once [`flag::CLOSING`] is set.
    pub close_reason: Reason,
    pub device: u32,
    /// Shard seconds of the last frame once authenticated; of the accept before.
    pub last_frame: u32,
    pub user: u64,
    pub rate: TokenBucket,
    /// Digest of the session token, for `LOGOUT`.
    pub digest: TokenDigest,
    pub crypto: Crypto,
    /// The buffers of a connection in the middle of something (see [`Busy`]); `None` while
    /// it holds no partial frame, no unwritten bytes and no WebSocket frame state.
    pub busy: Option<Box<Busy>>,
}

/// What a connection holds only while it is busy, boxed together so that an idle connection
/// pays one pointer for the three. Allocated when the first of them is needed and dropped
/// ([`Conn::tidy`]) at the end of a read and after a write, once all three are empty again.
#[derive(Default)]
pub struct Busy {
    /// The start of a frame whose end has not arrived; empty (unallocated) between frames.
    /// Encrypted, a partial handshake message or record follows it (see [`Crypto::Open`]).
    pub input: Vec<u8>,
    /// Bytes the socket has not taken yet; `None` whenever everything was written.
    pub output: Option<Output>,
    /// A WebSocket connection's frame state ([`flag::WS`]), only while it holds anything: the
    /// upgrade, a partial frame or message, a close sent. `None` between messages.
    pub ws: Option<Box<WsFrames>>,
}

impl Busy {
    fn is_idle(&self) -> bool {
        self.input.capacity() == 0 && self.output.is_none() && self.ws.is_none()
    }
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        gen: u32,
        now_secs: u32,
        rate: TokenBucket,
        crypto: Crypto,
        addr_key: u32,
    ) -> Conn {
        Conn {
            stream,
            gen,
            addr_key,
            state: State::AwaitHello,
            flags: 0,
            close_reason: Reason::PeerClosed,
            device: 0,
            last_frame: now_secs,
            user: 0,
            rate,
            digest: TokenDigest::default(),
            crypto,
            busy: None,
        }
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    pub fn closing(&self) -> bool {
        self.has(flag::CLOSING)
    }

    /// Marks the connection for closing at the end of the round; the first reason sticks.
    pub fn close(&mut self, reason: Reason) {
        if !self.closing() {
            self.flags |= flag::CLOSING;
            self.close_reason = reason;
        }
    }

    /// The second at which this connection times out, given the configured limits.
    pub fn deadline(&self, handshake_secs: u32, idle_secs: u32) -> u32 {
        match self.state {
            State::Authed => self.last_frame.saturating_add(idle_secs),
            _ => self.last_frame.saturating_add(handshake_secs),
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.output().map_or(0, |o| o.queued)
    }

    /// The held bytes of [`Busy::input`]; empty when not busy.
    pub fn input(&self) -> &[u8] {
        self.busy.as_deref().map_or(&[], |b| &b.input)
    }

    /// The input buffer, for appending; makes the connection busy.
    pub fn input_mut(&mut self) -> &mut Vec<u8> {
        &mut self.busy_mut().input
    }

    /// Takes the input buffer out (the connection stays busy until [`Conn::tidy`], so that
    /// putting a partial frame back does not box again).
    pub fn take_input(&mut self) -> Vec<u8> {
        self.busy
            .as_deref_mut()
            .map(|b| std::mem::take(&mut b.input))
            .unwrap_or_default()
    }

    /// Replaces the input buffer; an unallocated one boxes nothing.
    pub fn set_input(&mut self, input: Vec<u8>) {
        match self.busy.as_deref_mut() {
            Some(busy) => busy.input = input,
            None if input.capacity() == 0 => {}
            None => self.busy_mut().input = input,
        }
    }

    pub fn output(&self) -> Option<&Output> {
        self.busy.as_deref().and_then(|b| b.output.as_ref())
    }

    pub fn output_mut(&mut self) -> Option<&mut Output> {
        self.busy.as_deref_mut().and_then(|b| b.output.as_mut())
    }

    /// The output queue, made (and the connection busy) if there is none.
    pub fn output_or_new(&mut self) -> &mut Output {
        self.busy_mut().output.get_or_insert_with(Output::default)
    }

    /// Like [`output_or_new`](Self::output_or_new), for the frames a round queues: an idle
    /// connection takes a box (and its output queue) from `spare` instead of allocating.
    pub fn output_from(&mut self, spare: &mut SpareBusy) -> &mut Output {
        if self.busy.is_none() {
            self.busy = Some(spare.take());
        }
        self.output_or_new()
    }

    /// Everything queued was written: the output queue goes, and a box that then holds
    /// nothing goes to `spare` with its queue's allocation.
    pub fn written_all(&mut self, spare: &mut SpareBusy) {
        match self.busy.take() {
            Some(busy) if busy.input.capacity() == 0 && busy.ws.is_none() => spare.give(busy),
            busy => {
                self.busy = busy;
                self.drop_output();
            }
        }
    }

    /// Drops the output queue (everything written, or the connection failed).
    pub fn drop_output(&mut self) {
        if let Some(busy) = self.busy.as_deref_mut() {
            busy.output = None;
        }
        self.tidy();
    }

    pub fn ws(&self) -> Option<&WsFrames> {
        self.busy.as_deref().and_then(|b| b.ws.as_deref())
    }

    pub fn take_ws(&mut self) -> Option<Box<WsFrames>> {
        self.busy.as_deref_mut().and_then(|b| b.ws.take())
    }

    /// The WebSocket frame state, made from `make` (and the connection busy) if there is none.
    pub fn ws_or(&mut self, make: impl FnOnce() -> WsFrames) -> &mut WsFrames {
        self.busy_mut().ws.get_or_insert_with(|| Box::new(make()))
    }

    fn busy_mut(&mut self) -> &mut Busy {
        self.busy.get_or_insert_with(Box::default)
    }

    /// Frees the [`Busy`] box once the connection holds nothing in it.
    pub fn tidy(&mut self) {
        if self.busy.as_deref().is_some_and(Busy::is_idle) {
            self.busy = None;
        }
    }
}

/// [`Busy`] boxes of connections that wrote everything, kept for the next connection that
/// queues frames: in paced traffic every message makes two connections busy for a moment
/// (its sender for the answer, a recipient for the push), which would otherwise be two boxes
/// and two queues allocated and freed per message. Bounded ([`SpareBusy::MAX`] boxes, each
/// queue at most [`SpareBusy::MAX_FRAMES`] slots), one per shard.
#[derive(Default)]
// Boxed on purpose: a box moves between `Conn::busy` and here as it is, allocation and all.
#[allow(clippy::vec_box)]
pub struct SpareBusy(Vec<Box<Busy>>);

impl SpareBusy {
    /// Boxes kept at most.
    pub const MAX: usize = 128;
    /// Slots a kept output queue may have; a bigger one (a connection that had a backlog)
    /// is freed.
    pub const MAX_FRAMES: usize = 16;

    /// A box holding nothing, with an empty output queue (allocated, if it was kept).
    fn take(&mut self) -> Box<Busy> {
        self.0.pop().unwrap_or_default()
    }

    /// Keeps `busy` (holding no input and no WebSocket state) if there is room.
    fn give(&mut self, mut busy: Box<Busy>) {
        if self.0.len() >= Self::MAX {
            return;
        }
        match busy.output.as_mut() {
            Some(out) if out.frames.capacity() <= Self::MAX_FRAMES => out.clear(),
            _ => busy.output = None,
        }
        self.0.push(busy);
    }

    /// Boxes kept.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Encoded frames waiting for the socket. Frames are shared [`Bytes`]: a push to a thousand
/// connections is encoded once and queued a thousand times by reference. On an encrypted
/// connection the frames after the first `wire` are plaintext, sealed together as one record
/// just before the socket write ([`Output::seal`]); the first `wire` are bytes for the wire as
/// they are (sealed records, handshake messages).
#[derive(Default)]
pub struct Output {
    pub(super) frames: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    head_written: usize,
    pub(super) queued: usize,
    /// Frames at the front that go on the wire as they are.
    wire: usize,
    /// WebSocket: frames at the front already inside a WebSocket frame (or HTTP).
    pub(super) ws_framed: usize,
}

impl Output {
    /// Empties the queue, keeping its allocation.
    fn clear(&mut self) {
        self.frames.clear();
        self.head_written = 0;
        self.queued = 0;
        self.wire = 0;
        self.ws_framed = 0;
    }

    pub fn push(&mut self, frame: Bytes) {
        self.queued += frame.len();
        self.frames.push_back(frame);
    }

    /// Queues bytes for the wire as they are (a handshake message, or a plaintext answer to a
    /// plaintext peer). Only while nothing is waiting to be sealed.
    pub fn push_wire(&mut self, bytes: Bytes) {
        debug_assert_eq!(
            self.wire,
            self.frames.len(),
            "wire bytes go before any frame"
        );
        self.push(bytes);
        self.wire = self.frames.len();
    }

    /// Seals every plaintext frame queued as one record (more only past 64 KiB), through
    /// `plain` (scratch for the concatenated frames) into `sealed` (scratch the record is split
    /// from, so that its allocation is reused once the record is written).
    pub fn seal(
        &mut self,
        transport: &mut Transport,
        plain: &mut Vec<u8>,
        sealed: &mut BytesMut,
    ) -> Result<(), noise::Error> {
        if self.wire == self.frames.len() {
            return Ok(());
        }
        plain.clear();
        for frame in self.frames.drain(self.wire..) {
            plain.extend_from_slice(&frame);
        }
        transport.seal(plain, sealed)?;
        let record = sealed.split().freeze();
        self.queued = self.queued - plain.len() + record.len();
        self.frames.push_back(record);
        self.wire = self.frames.len();
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Inserts wire bytes at `at` (a WebSocket header before the frames it wraps, or a frame
    /// after them); everything up to them counts as framed.
    pub(super) fn insert_wire(&mut self, at: usize, bytes: Bytes) {
        self.queued += bytes.len();
        self.frames.insert(at, bytes);
        if self.wire > at || self.wire == self.frames.len() - 1 {
            self.wire += 1;
        }
        self.ws_framed = self.frames.len();
    }

    /// Fills `slices` with the unwritten bytes, front first; returns how many it filled.
    pub fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, frame) in self.frames.iter().enumerate().take(slices.len()) {
            let from = if i == 0 { self.head_written } else { 0 };
            slices[i] = IoSlice::new(&frame[from..]);
            n += 1;
        }
        n
    }

    /// Drops `n` written bytes from the front.
    pub fn advance(&mut self, mut n: usize) {
        self.queued -= n.min(self.queued);
        while n > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let left = front.len() - self.head_written;
            if n < left {
                self.head_written += n;
                return;
            }
            n -= left;
            self.head_written = 0;
            self.frames.pop_front();
            self.wire = self.wire.saturating_sub(1);
            self.ws_framed = self.ws_framed.saturating_sub(1);
        }
    }
}

/// Requests per second with bursts: `rate` tokens a second up to `burst`, one per request.
/// Kept in whole tokens and milliseconds so it fits in 8 bytes of [`Conn`].
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: u32,
    /// Shard milliseconds (wrapping) of the last refill.
    at_ms: u32,
}

impl TokenBucket {
    pub fn full(burst: u32, now_ms: u32) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            at_ms: now_ms,
        }
    }

    /// Takes one token; false when the bucket is empty.
    pub fn take(&mut self, rate: u32, burst: u32, now_ms: u32) -> bool {
        let elapsed = now_ms.wrapping_sub(self.at_ms) as u64;
        let earned = elapsed * rate as u64 / 1000;
        if earned > 0 {
            self.tokens = (self.tokens as u64 + earned).min(burst as u64) as u32;
            // Keep the remainder: advance the clock only by the time the tokens took.
            self.at_ms = self
                .at_ms
                .wrapping_add((earned * 1000 / rate as u64) as u32);
            if self.tokens == burst {
                self.at_ms = now_ms;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_is_small() {
        let size = size_of::<Conn>();
        let crypto = size_of::<Crypto>();
        assert!(
            crypto <= 96,
            "Crypto is {crypto} bytes; encryption may add at most 96 bytes per connection"
        );
        assert!(
            size - crypto <= 128,
            "Conn is {size} bytes ({crypto} of them encryption); every idle connection pays for each one"
        );
    }

    /// Every byte of `Conn` is 19 KB at 19K idle connections and 10 MB at 10M (issue 13:
    /// at most 256 bytes of user space per idle connection, all of it included): it grows
    /// only on purpose, by raising this bound. 184 before the input, output and WebSocket
    /// state moved into one [`Busy`] box.
    #[test]
    fn an_idle_connection_is_pinned_at_its_measured_size() {
        let size = size_of::<Conn>();
        assert!(
            size <= 152,
            "Conn is {size} bytes, more than the 152 measured for issue 13"
        );
    }

    /// A connection over loopback (its socket is not used).
    fn conn() -> Conn {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let bucket = TokenBucket::full(1, 0);
        Conn::new(TcpStream::from_std(stream), 1, 0, bucket, Crypto::Plain, 0)
    }

    fn box_addr(conn: &Conn) -> *const Busy {
        conn.busy.as_deref().map(|b| b as *const Busy).unwrap()
    }

    #[test]
    fn a_connection_that_wrote_everything_leaves_its_box_and_queue_to_the_next() {
        let mut spare = SpareBusy::default();
        let (mut a, mut b) = (conn(), conn());
        a.output_from(&mut spare).push(Bytes::from_static(b"sent"));
        let first = box_addr(&a);
        a.written_all(&mut spare);
        assert!(a.busy.is_none(), "an idle connection holds no box");
        assert_eq!(spare.len(), 1);
        b.output_from(&mut spare)
            .push(Bytes::from_static(b"pushed"));
        assert_eq!(
            box_addr(&b),
            first,
            "the next connection takes the kept box"
        );
        assert!(spare.is_empty());
        let out = b.output().unwrap();
        assert!(out.frames.capacity() >= 1, "with its queue's allocation");
        assert_eq!(
            (out.queued, out.frames.len()),
            (6, 1),
            "and nothing of the first's"
        );
    }

    #[test]
    fn only_empty_boxes_with_small_queues_are_kept_and_only_so_many() {
        let mut spare = SpareBusy::default();
        // A partial frame waits: the box stays with its connection.
        let mut reading = conn();
        reading.set_input(vec![0, 0]);
        reading
            .output_from(&mut spare)
            .push(Bytes::from_static(b"x"));
        reading.written_all(&mut spare);
        assert!(spare.is_empty());
        assert!(reading.output().is_none() && reading.input() == [0, 0]);
        // A backlog grew the queue: the box is kept, its queue is not.
        let mut backlog = conn();
        for _ in 0..=SpareBusy::MAX_FRAMES {
            backlog
                .output_from(&mut spare)
                .push(Bytes::from_static(b"x"));
        }
        backlog.written_all(&mut spare);
        assert!(spare.0[0].output.is_none());
        for _ in 0..SpareBusy::MAX + 10 {
            let mut c = conn();
            c.output_from(&mut spare).push(Bytes::from_static(b"x"));
            c.written_all(&mut spare);
            let mut d = conn();
            d.output_or_new().push(Bytes::from_static(b"y"));
            d.written_all(&mut spare);
        }
        assert_eq!(spare.len(), SpareBusy::MAX);
    }

    #[test]
    fn output_seals_the_queued_frames_as_one_record_after_the_wire_bytes() {
        let key = noise::Keypair::from_private([0x53; 32]);
        let (mut client, mut server) = established_pair(&key);
        let mut out = Output::default();
        out.push_wire(Bytes::from_static(b"hs"));
        out.push(Bytes::from_static(b"abc"));
        out.push(Bytes::from_static(b"defg"));
        let (mut plain, mut sealed) = (Vec::new(), BytesMut::new());
        out.seal(&mut server, &mut plain, &mut sealed).unwrap();
        let unwritten = |out: &Output| {
            let mut s = [IoSlice::new(&[]); 4];
            let n = out.slices(&mut s);
            s[..n].iter().map(|s| s.to_vec()).collect::<Vec<_>>()
        };
        let wire = unwritten(&out);
        assert_eq!(wire.len(), 2, "the wire bytes, then one record");
        assert_eq!(wire[0], b"hs");
        assert_eq!(out.queued, 2 + 2 + 7 + 16, "the record's length counts");
        let mut record = BytesMut::from(&wire[1][..]);
        let mut opened = BytesMut::new();
        client.open_all(&mut record, 100, &mut opened).unwrap();
        assert_eq!(&opened[..], b"abcdefg");
        out.advance(2);
        out.push(Bytes::from_static(b"h"));
        out.seal(&mut server, &mut plain, &mut sealed).unwrap();
        assert_eq!(
            unwritten(&out).len(),
            2,
            "the unwritten record, then the new one"
        );
        // Sealing with nothing new queued does nothing.
        out.seal(&mut server, &mut plain, &mut sealed).unwrap();
        assert_eq!(unwritten(&out).len(), 2);
    }

    /// Both ends of a finished handshake: (client, server) transports.
    pub(crate) fn established_pair(server_key: &noise::Keypair) -> (Transport, Transport) {
        let client_key = noise::Keypair::from_private([0x43; 32]);
        let mut to_server = BytesMut::new();
        let mut client =
            Handshake::initiator_ik(&client_key, server_key.public(), &mut to_server).unwrap();
        let mut server = Handshake::responder(server_key);
        let mut to_client = BytesMut::new();
        let server_done = server
            .handle(&mut to_server, &mut to_client)
            .unwrap()
            .unwrap();
        let client_done = client
            .handle(&mut to_client, &mut to_server)
            .unwrap()
            .unwrap();
        (client_done.transport, server_done.transport)
    }

    #[test]
    fn output_advances_across_frames() {
        let mut out = Output::default();
        out.push(Bytes::from_static(b"abc"));
        out.push(Bytes::from_static(b"defg"));
        out.advance(2);
        let unwritten = |out: &Output| {
            let mut s = [IoSlice::new(&[]); 4];
            let n = out.slices(&mut s);
            s[..n].iter().map(|s| s.to_vec()).collect::<Vec<_>>()
        };
        assert_eq!(unwritten(&out), vec![b"c".to_vec(), b"defg".to_vec()]);
        out.advance(3);
        assert_eq!(unwritten(&out), vec![b"fg".to_vec()]);
        out.advance(2);
        assert!(out.is_empty());
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::full(10, 0);
        assert_eq!((0..20).filter(|_| b.take(5, 10, 0)).count(), 10);
        assert!(!b.take(5, 10, 100), "half a token is not a token");
        assert!(b.take(5, 10, 200));
        assert!(!b.take(5, 10, 200));
        assert_eq!(
            (0..20).filter(|_| b.take(5, 10, 60_000)).count(),
            10,
            "refill is capped at the burst"
        );
    }
}
