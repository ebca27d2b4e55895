//! Socket work of a shard: accept, read and frame, queue and write, close.
//!
//! Edge-triggered, as in mio's examples: accepts and reads are drained until `WouldBlock`,
//! `Interrupted` is retried, a read of 0 bytes is the peer closing. A read that fills less than
//! it asked for also ends a readable event's reading ([`Drain::ShortRead`]): the socket is
//! empty for now, and bytes that arrive later raise a new edge. Handlers never close a
//! socket themselves; they mark the connection and the loop closes it after the round's writes
//! (so an `ERROR_REPLY` before a close is written first).
//!
//! Writes follow redis: replies and pushes are queued during the round and written directly at
//! its end; only if the socket refuses bytes is WRITABLE interest registered, and it is dropped
//! again once the queue is empty.
//!
//! Encrypted connections (NOISE.md; [`Crypto`]): a new connection runs the Noise
//! handshake before any frame; then the read path opens whole records and frames their
//! plaintext, and the write path seals what a connection queued in the round as one record
//! just before writing it. Any noise error closes the connection after writing what the
//! handshake answered (the 3-byte REJECT, or for a plaintext client a plaintext
//! `ERROR_REPLY` saying that encryption is required), counted by reason
//! (`courier_noise_failures_total`).

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use courier_protocol::noise::{self, Handshake, MAX_RECORD_LEN};
use courier_protocol::{encode, peek_len, ErrorCode, ErrorReply, Frame, LEN_BYTES};
use mio::{Interest, Token};

use super::conn::{flag, Conn, Crypto, State, TokenBucket};
use super::Shard;
use crate::caller::ConnRef;
use crate::metrics::{NoiseFailure, Reason, ShardMetrics, WsRefusal};

/// Slices handed to one `writev`.
const WRITE_SLICES: usize = 64;

/// The largest record a connection may send before it is authenticated (PROTOCOL.md section
/// 9): what comes before `AUTH_OK` is small, so an unauthenticated peer cannot make the
/// server hold more than this per connection.
pub const PRE_AUTH_MAX_RECORD: usize = 16 * 1024;

/// The largest frame (its `len` field) a connection may send before it is authenticated
/// (PROTOCOL.md section 9), whatever `--max-frame` says: `HELLO`, `REGISTER`, `LOGIN`,
/// `RESUME` and `PING` take a few hundred bytes at most.
pub const PRE_AUTH_MAX_FRAME: u32 = 4096;

/// How far a connection's reading goes in one turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drain {
    /// Until a read returns fewer bytes than it asked for (or `WouldBlock`): a short read of a
    /// TCP socket took everything it held, and with edge-triggered polling bytes that arrive
    /// after it raise a new edge, so the read that would only return `WouldBlock` is skipped
    /// (as tokio's `poll_read` clears readiness on a short read). Only for a readable event
    /// that did not also report the peer's close or an error: a FIN that arrived before the
    /// event raises no new edge, so then the reading goes on to the read that returns 0.
    ShortRead,
    /// Until `WouldBlock`: a read not prompted by a fresh event (carried over, held while
    /// saturated, a timer's check), or the peer closed or failed.
    WouldBlock,
}

impl Shard {
    pub(super) fn conn_ref(&self, slot: usize) -> Option<ConnRef> {
        self.conns.get(slot).map(|c| ConnRef {
            node: self.core.router.local_index(),
            shard: self.id,
            slot: slot as u32,
            gen: c.gen,
        })
    }

    /// The connection `r` names, if it is still the same connection.
    pub(super) fn local_slot(&self, r: ConnRef) -> Option<usize> {
        let slot = r.slot as usize;
        match self.conns.get(slot) {
            Some(c)
                if r.shard == self.id
                    && c.gen == r.gen
                    && r.node == self.core.router.local_index() =>
            {
                Some(slot)
            }
            _ => None,
        }
    }

    pub(super) fn accept(&mut self, listener: usize) {
        loop {
            let Some(l) = self.listeners.get(listener) else {
                return;
            };
            let (mut stream, peer) = match l.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Typically EMFILE: keep serving the connections we have. The connection
                    // stays in the backlog, and an edge-triggered listener reports no new
                    // edge for it: `retry_accepts` tries again on the next tick and whenever
                    // this shard closes a connection.
                    if !self.accept_stalled {
                        tracing::warn!(
                            shard = self.id,
                            error = %e,
                            "accept failed; retrying every second and after each close. \
                             Raise the open files limit or lower --max-connections"
                        );
                        self.accept_stalled = true;
                    }
                    return;
                }
            };
            if self.accept_stalled {
                self.accept_stalled = false;
                tracing::info!(shard = self.id, "accepting connections again");
            }
            let ws = self.is_ws_listener(listener);
            if self.core.connections.fetch_add(1, Ordering::Relaxed) >= self.core.max_connections {
                self.core.connections.fetch_sub(1, Ordering::Relaxed);
                let mut goodbye = bytes::BytesMut::new();
                let frame = Frame::ErrorReply(ErrorReply {
                    code: ErrorCode::ServerFull as u16,
                    message: "the server is full; try another node or later".into(),
                });
                encode(0, &frame, &mut goodbye);
                if ws {
                    goodbye = super::ws::refusal_server_full(
                        "the server is full; try another node or later",
                    )
                    .into();
                    self.metrics().ws_refused(WsRefusal::ServerFull);
                }
                // Best effort: a fresh socket's buffer has room for one small frame.
                let _ = stream.write(&goodbye);
                self.metrics().disconnected(Reason::ServerFull);
                continue;
            }
            let addr_key = self.core.per_addr.key(peer.ip());
            if !self.core.per_addr.try_add(addr_key) {
                self.core.connections.fetch_sub(1, Ordering::Relaxed);
                let max = self.core.per_addr.max;
                tracing::debug!(shard = self.id, %peer, max, "refused a connection: too many from its address");
                let mut goodbye = bytes::BytesMut::new();
                let frame = Frame::ErrorReply(ErrorReply {
                    code: ErrorCode::ServerFull as u16,
                    message: format!(
                        "too many connections from your address (at most {max}): close some, \
                         or ask the operator to raise --max-conns-per-addr"
                    ),
                });
                encode(0, &frame, &mut goodbye);
                if ws {
                    goodbye = super::ws::refusal_server_full(&format!(
                        "too many connections from your address (at most {max})"
                    ))
                    .into();
                    self.metrics().ws_refused(WsRefusal::ServerFull);
                }
                // Best effort, in plaintext: nothing is encrypted before the handshake.
                let _ = stream.write(&goodbye);
                self.metrics().disconnected(Reason::TooManyFromAddr);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let gen = self.next_gen;
            self.next_gen = self.next_gen.wrapping_add(1).max(1);
            let now = self.epoch.elapsed();
            let bucket = TokenBucket::full(self.burst(), now.as_millis() as u32);
            let crypto = match &self.core.noise_key {
                Some(key) => Crypto::Handshaking(Box::new(Handshake::responder(key))),
                None => Crypto::Plain,
            };
            let entry = self.conns.vacant_entry();
            let slot = entry.key();
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut stream, Token(slot), Interest::READABLE)
            {
                tracing::warn!(shard = self.id, error = %e, "cannot register a connection");
                self.core.connections.fetch_sub(1, Ordering::Relaxed);
                self.core.per_addr.remove(addr_key);
                continue;
            }
            entry.insert(Conn::new(
                stream,
                gen,
                now.as_secs() as u32,
                bucket,
                crypto,
                addr_key,
            ));
            ShardMetrics::add(&self.metrics().connections, 1);
            if ws {
                self.ws_accepted(slot);
            }
            // The first look comes at the earliest deadline this connection can have: the
            // handshake's, or the idle limit's if it authenticates at once (see timer.rs).
            let handshake = self.core.config.handshake_timeout_secs.min(u32::MAX as u64) as u32;
            let first_look = handshake.min(3 * self.core.config.heartbeat_secs as u32);
            let deadline = now.as_secs() as u32 + first_look;
            self.wheel.schedule(slot as u32, gen, deadline);
        }
    }

    /// Accepts again on every listener after an accept failed (see `accept`).
    pub(super) fn retry_accepts(&mut self) {
        if self.accept_stalled {
            for i in 0..self.listeners.len() {
                self.accept(i);
            }
        }
    }

    pub(super) fn burst(&self) -> u32 {
        self.core.config.rate_limit.saturating_mul(2)
    }

    pub(super) fn on_conn_event(
        &mut self,
        slot: usize,
        readable: bool,
        writable: bool,
        drain: Drain,
    ) {
        if writable {
            self.flush_conn(slot);
        }
        if readable {
            self.read_until(slot, drain);
        }
    }

    /// Reads until `WouldBlock` (see [`read_until`](Self::read_until)).
    pub(super) fn read(&mut self, slot: usize) {
        self.read_until(slot, Drain::WouldBlock);
    }

    /// Reads until `drain` says the socket is empty or `--read-budget` bytes, handling every
    /// whole frame as it arrives. A client that keeps its socket full is carried over to the
    /// next round instead of holding the shard while everyone else waits (edge-triggered
    /// polling would not report the bytes it left again).
    pub(super) fn read_until(&mut self, slot: usize, drain: Drain) {
        if self.conns.get(slot).is_none_or(|c| c.has(flag::PAUSED)) {
            return;
        }
        if self.has_held_frame(slot) {
            // Frames read before a pause (see `pause_reads`) come before the socket's.
            self.on_bytes(slot, &[]);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut budget = self.core.config.read_budget;
        while let Some(conn) = self
            .conns
            .get_mut(slot)
            .filter(|c| !c.closing() && !c.has(flag::PAUSED))
        {
            if budget == 0 {
                self.carry_reads.push((slot, conn.gen));
                break;
            }
            let want = scratch.len().min(budget);
            let ws = conn.has(flag::WS);
            match conn.stream.read(&mut scratch[..want]) {
                Ok(0) => {
                    self.close_soon(slot, Reason::PeerClosed);
                    break;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    ShardMetrics::add(&self.metrics().bytes_in, n as u64);
                    if ws {
                        self.on_ws_bytes(slot, &mut scratch[..n]);
                    } else {
                        self.on_bytes(slot, &scratch[..n]);
                    }
                    if n < want && drain == Drain::ShortRead {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close_soon(slot, Reason::PeerClosed);
                    break;
                }
            }
        }
        self.scratch = scratch;
        // The read's partial frame, record or WebSocket state was put back; an idle
        // connection gives its box back.
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.tidy();
        }
    }

    /// Handles bytes read from the connection in `slot`: frames them, or on an encrypted
    /// connection runs the handshake or opens records first.
    pub(super) fn on_bytes(&mut self, slot: usize, data: &[u8]) {
        match self.conns.get(slot).map(|c| &c.crypto) {
            None => {}
            Some(Crypto::Plain) => self.on_plaintext(slot, data),
            Some(_) => self.on_ciphertext(slot, data),
        }
    }

    /// The encrypted read path: the connection's held bytes (plaintext of a partial frame,
    /// then a partial handshake message or record) and `data` go through the handshake or
    /// are opened, their plaintext is framed, and what is incomplete is held again.
    fn on_ciphertext(&mut self, slot: usize, data: &[u8]) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let input = conn.take_input();
        let held = conn.crypto.held_plain(&input);
        let mut records = std::mem::take(&mut self.records_in);
        let mut plain = std::mem::take(&mut self.plain_in);
        records.clear();
        records.extend_from_slice(&input[held..]);
        records.extend_from_slice(data);
        plain.clear();
        plain.extend_from_slice(&input[..held]);
        drop(input);
        let opened = self.unwrap_records(slot, &mut records, &mut plain);
        if opened.is_ok() && !plain.is_empty() {
            self.on_plaintext(slot, &plain);
        }
        if let Some(conn) = self.conns.get_mut(slot).filter(|c| !c.closing()) {
            // What on_plaintext kept (a partial frame, or frames held while paused), then the
            // partial record or handshake message.
            let held = conn.input().len();
            if !records.is_empty() {
                conn.input_mut().extend_from_slice(&records);
            }
            if let Crypto::Open { held_plain, .. } = &mut conn.crypto {
                *held_plain = held as u32;
            }
        }
        self.records_in = records;
        self.plain_in = plain;
    }

    /// Runs the handshake on `records` (answering it) and opens every whole record into
    /// `plain`. On a noise error the connection is closing when this returns `Err`.
    fn unwrap_records(
        &mut self,
        slot: usize,
        records: &mut BytesMut,
        plain: &mut BytesMut,
    ) -> Result<(), ()> {
        let Some(conn) = self.conns.get_mut(slot) else {
            return Err(());
        };
        if let Crypto::Handshaking(handshake) = &mut conn.crypto {
            let mut answer = BytesMut::new();
            let result = handshake.handle(records, &mut answer);
            if !answer.is_empty() {
                conn.output_or_new().push_wire(answer.freeze());
                self.want_write(slot);
            }
            match result {
                Ok(None) => return Ok(()),
                Ok(Some(done)) => {
                    let Some(conn) = self.conns.get_mut(slot) else {
                        return Err(());
                    };
                    conn.crypto = Crypto::Open {
                        transport: done.transport,
                        held_plain: 0,
                    };
                }
                Err(e) => {
                    self.noise_failed(slot, &e);
                    return Err(());
                }
            }
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return Err(());
        };
        let Crypto::Open { transport, .. } = &mut conn.crypto else {
            return Ok(());
        };
        let limit = match conn.state {
            State::Authed => MAX_RECORD_LEN,
            _ => PRE_AUTH_MAX_RECORD,
        };
        match transport.open_all(records, limit, plain) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.noise_failed(slot, &e);
                Err(())
            }
        }
    }

    /// Closes a connection whose encrypted transport failed, counting why. A plaintext client
    /// is told in plaintext, the only thing it can read.
    fn noise_failed(&mut self, slot: usize, e: &noise::Error) {
        let why = NoiseFailure::of(e);
        self.metrics().noise_failed(why);
        tracing::debug!(shard = self.id, error = %e, "closing a connection: encrypted transport failed");
        if why == NoiseFailure::PlaintextPeer {
            let frame = Frame::ErrorReply(ErrorReply {
                code: ErrorCode::EncryptionRequired as u16,
                message: "this server requires the encrypted transport (protocol/NOISE.md): \
                          pin the server's key (`courier keys show` on the server prints it; \
                          courier-cli --server-key)"
                    .into(),
            });
            let bytes = self.encode(0, &frame);
            if let Some(conn) = self.conns.get_mut(slot) {
                conn.output_or_new().push_wire(bytes);
                self.want_write(slot);
            }
        }
        self.close_soon(slot, Reason::EncryptionFailed);
    }

    /// Puts the connection in this round's write list.
    pub(super) fn want_write(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            if !conn.has(flag::PENDING_WRITE) {
                conn.flags |= flag::PENDING_WRITE;
                self.pending_writes.push(slot);
            }
        }
    }

    /// Frames `data` (appended to any partial frame the connection held) and handles each
    /// whole frame; keeps only an incomplete tail, and only after its length passed the limit.
    fn on_plaintext(&mut self, slot: usize, data: &[u8]) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let mut held = conn.take_input();
        let buf: &[u8] = if held.is_empty() {
            data
        } else {
            held.extend_from_slice(data);
            &held
        };
        let max_frame = self.decoder.max_frame_len();
        let mut pos = 0;
        while pos < buf.len() {
            let Some(conn) = self.conns.get(slot) else {
                return;
            };
            // Frames that arrive while reads are paused (the rest of a WebSocket read) are
            // kept with the others.
            if conn.has(flag::PAUSED) {
                break;
            }
            // Checked per frame: RESUME authenticates at once, and what follows it may be big.
            let authed = conn.state == State::Authed;
            let max = match authed {
                true => max_frame,
                false => max_frame.min(PRE_AUTH_MAX_FRAME),
            };
            let len = match peek_len(&buf[pos..], max) {
                Ok(Some(len)) => len as usize,
                Ok(None) => break,
                Err(courier_protocol::Error::FrameTooLarge { len, .. }) if !authed => {
                    tracing::debug!(
                        shard = self.id,
                        len,
                        "closing a connection: big frame before authentication"
                    );
                    let message = format!(
                        "a frame of {len} bytes before authentication: until AUTH_OK frames may \
                         be at most {PRE_AUTH_MAX_FRAME} bytes (PROTOCOL.md section 9); log in first"
                    );
                    self.reply_error(slot, 0, ErrorCode::FrameTooLarge, &message);
                    self.close_soon(slot, Reason::ProtocolError);
                    return;
                }
                Err(e) => {
                    tracing::debug!(shard = self.id, error = %e, "closing a connection: bad frame");
                    self.fail(slot, 0, e.code(), Reason::ProtocolError);
                    return;
                }
            };
            let total = LEN_BYTES + len;
            if buf.len() - pos < total {
                break;
            }
            self.frame_buf.clear();
            self.frame_buf.extend_from_slice(&buf[pos..pos + total]);
            pos += total;
            match self.decoder.decode(&mut self.frame_buf) {
                Ok(Some(env)) => {
                    ShardMetrics::add(&self.metrics().frames_in, 1);
                    self.on_frame(slot, env.request_id, env.frame);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(shard = self.id, error = %e, "closing a connection: bad frame");
                    self.fail(slot, 0, e.code(), Reason::ProtocolError);
                    return;
                }
            }
            match self.conns.get(slot) {
                None => return,
                Some(c) if c.closing() => return,
                // Keep the rest, frames included, for when reading resumes.
                Some(c) if c.has(flag::PAUSED) => break,
                Some(_) => {}
            }
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if pos < buf.len() {
            // Only the bytes that arrived are kept, never room for the length the prefix
            // announces (a peer could announce a whole frame and send four bytes, on many
            // connections): the buffer grows as the rest arrives, by doubling.
            if held.is_empty() {
                conn.set_input(buf[pos..].to_vec());
            } else {
                held.drain(..pos);
                conn.set_input(held);
            }
        }
    }

    /// Whether the connection holds a whole frame it has not handled (kept when it paused).
    fn has_held_frame(&self, slot: usize) -> bool {
        let Some(conn) = self.conns.get(slot) else {
            return false;
        };
        let input = conn.input();
        let plain = &input[..conn.crypto.held_plain(input)];
        match peek_len(plain, self.decoder.max_frame_len()) {
            Ok(Some(len)) => plain.len() >= LEN_BYTES + len as usize,
            _ => false,
        }
    }

    /// Stops reading the connection in `slot`: its last request went to `target`, which is
    /// congested. Its unread bytes stay in the socket, so TCP slows the client down.
    pub(super) fn pause_reads(&mut self, slot: usize, target: u16) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if !conn.has(flag::PAUSED) {
            conn.flags |= flag::PAUSED;
            self.paused.push((slot, conn.gen, target));
            let m = &self.core.metrics.shards[self.id as usize];
            ShardMetrics::add(&m.paused_reads, 1);
            m.paused_now
                .store(self.paused.len() as u64, Ordering::Relaxed);
        }
    }

    /// Reads again (next round) the paused connections whose target is relieved.
    pub(super) fn resume_reads(&mut self) {
        if self.paused.is_empty() {
            return;
        }
        let mut paused = std::mem::take(&mut self.paused);
        paused.retain(|&(slot, gen, target)| {
            let Some(conn) = self.conns.get_mut(slot).filter(|c| c.gen == gen) else {
                return false;
            };
            if !self.outbox.relieved(target) {
                return true;
            }
            conn.flags &= !flag::PAUSED;
            self.carry_reads.push((slot, gen));
            false
        });
        self.paused = paused;
        self.metrics()
            .paused_now
            .store(self.paused.len() as u64, Ordering::Relaxed);
    }

    /// Queues `frame` for the connection in `slot`.
    pub(super) fn send(&mut self, slot: usize, request_id: u32, frame: &Frame) {
        let bytes = self.encode(request_id, frame);
        self.queue(slot, bytes);
    }

    /// Queues encoded bytes; cuts the connection off as a slow consumer past `max_output`.
    pub(super) fn queue(&mut self, slot: usize, bytes: Bytes) {
        let max = self.core.config.max_output;
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.closing() && conn.close_reason == Reason::SlowConsumer {
            return;
        }
        if conn.has(flag::WS) && (!conn.ws_open() || conn.ws().is_some_and(|w| w.close_sent)) {
            // No Courier frame goes out before the upgrade (a handshake timeout is a close).
            return;
        }
        conn.output_from(&mut self.spare_busy).push(bytes);
        let queued = conn.queued();
        if !conn.has(flag::PENDING_WRITE) {
            conn.flags |= flag::PENDING_WRITE;
            self.pending_writes.push(slot);
        }
        ShardMetrics::add(&self.metrics().frames_out, 1);
        if queued > max {
            self.slow_consumer(slot, queued);
        }
    }

    pub(super) fn slow_consumer(&mut self, slot: usize, queued: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        tracing::warn!(
            shard = self.id,
            user = conn.user,
            queued,
            limit = self.core.config.max_output,
            "slow consumer: output queue over the limit, closing the connection"
        );
        // Best effort: the goodbye goes after what is queued, which the peer is not reading.
        let frame = Frame::ErrorReply(ErrorReply {
            code: ErrorCode::SlowConsumer as u16,
            message: "output queue over the limit: read faster".into(),
        });
        let mut goodbye = bytes::BytesMut::new();
        encode(0, &frame, &mut goodbye);
        if let Some(out) = conn.output_mut() {
            out.push(goodbye.freeze());
        }
        self.close_soon(slot, Reason::SlowConsumer);
    }

    /// Marks a connection to be closed at the end of the round.
    pub(super) fn close_soon(&mut self, slot: usize, reason: Reason) {
        if let Some(conn) = self.conns.get_mut(slot) {
            if !conn.closing() {
                conn.close(reason);
                self.closing.push(slot);
            }
        }
    }

    /// Writes every connection that queued bytes this round.
    pub(super) fn flush_writes(&mut self) {
        let pending = std::mem::take(&mut self.pending_writes);
        for &slot in &pending {
            if let Some(conn) = self.conns.get_mut(slot) {
                conn.flags &= !flag::PENDING_WRITE;
            }
            self.flush_conn(slot);
        }
        let mut pending = pending;
        pending.clear();
        if self.pending_writes.is_empty() {
            self.pending_writes = pending;
        }
    }

    /// Writes as much of the connection's queue as the socket takes; on an encrypted
    /// connection, seals what was queued as one record first.
    pub(super) fn flush_conn(&mut self, slot: usize) {
        if !self.seal_output(slot) {
            return;
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.ws_open() && !self.ws_before_write(slot) {
            return;
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let mut written = 0u64;
        let mut failed = false;
        while let Some(out) = conn.busy.as_deref_mut().and_then(|b| b.output.as_mut()) {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let n = out.slices(&mut slices);
            match conn.stream.write_vectored(&slices[..n]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(k) => {
                    written += k as u64;
                    out.advance(k);
                    if out.is_empty() {
                        conn.written_all(&mut self.spare_busy);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        let want_writable = conn.output().is_some() && !failed;
        if want_writable != conn.has(flag::WRITABLE) {
            let interest = if want_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if self
                .poll
                .registry()
                .reregister(&mut conn.stream, Token(slot), interest)
                .is_ok()
            {
                conn.flags ^= flag::WRITABLE;
            }
        }
        if failed {
            conn.drop_output();
            self.close_soon(slot, Reason::PeerClosed);
        }
        ShardMetrics::add(&self.metrics().bytes_out, written);
    }

    /// On an encrypted connection, seals what was queued as one record; false if the
    /// connection is gone or its transport failed.
    pub(super) fn seal_output(&mut self, slot: usize) -> bool {
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        let out = conn.busy.as_deref_mut().and_then(|b| b.output.as_mut());
        if let (Crypto::Open { transport, .. }, Some(out)) = (&mut conn.crypto, out) {
            if let Err(e) = out.seal(transport, &mut self.plain_out, &mut self.sealed_out) {
                // Only NonceExhausted: 2^64 records; the client reconnects.
                conn.drop_output();
                self.noise_failed(slot, &e);
                return false;
            }
        }
        true
    }

    /// Closes every connection marked this round; each close frees a descriptor, so a stalled
    /// accept is retried.
    pub(super) fn close_pending(&mut self) {
        let closing = std::mem::take(&mut self.closing);
        for &slot in &closing {
            self.close_now(slot);
        }
        let closed = !closing.is_empty();
        let mut closing = closing;
        closing.clear();
        if self.closing.is_empty() {
            self.closing = closing;
        }
        if closed {
            self.retry_accepts();
        }
    }

    /// Deregisters and drops a connection, and undoes everything it registered elsewhere:
    /// directory entry (recording last seen if it was the user's last device), presence
    /// subscriptions, counters.
    fn close_now(&mut self, slot: usize) {
        if !self.conns.contains(slot) {
            return;
        }
        let conn_ref = self.conn_ref(slot);
        let mut conn = self.conns.remove(slot);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let m = &self.core.metrics.shards[self.id as usize];
        ShardMetrics::sub(&m.connections, 1);
        m.disconnected(conn.close_reason);
        if conn.has(flag::WS) {
            self.ws_closed(&conn);
        }
        self.core.connections.fetch_sub(1, Ordering::Relaxed);
        self.core.per_addr.remove(conn.addr_key);
        if conn.has(flag::SUBSCRIBED) {
            let users = self.subs.drop_conn(slot as u32);
            self.core
                .presence_subscriptions
                .fetch_sub(users.len(), Ordering::Relaxed);
            self.presence_unwatch(&users);
        }
        if conn.state == State::Authed {
            ShardMetrics::sub(&m.authenticated, 1);
            if let Some(r) = conn_ref {
                if let Some(seq) = self.core.directory.unregister(conn.user, r) {
                    let now = crate::clock::wall_us();
                    self.engine.record_last_seen(conn.user, now);
                    self.presence_changed(seq, conn.user, false, now);
                }
            }
        }
    }
}
