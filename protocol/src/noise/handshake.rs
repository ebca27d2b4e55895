//! The handshake state machine: handshake messages in and out as bytes, an [`Established`]
//! transport at the end.

use std::sync::LazyLock;

use bytes::{Buf, BufMut, BytesMut};
use snow::params::NoiseParams;

use super::{
    Error, Keypair, PublicKey, Transport, KEY_LEN, LEN_BYTES, MAX_HANDSHAKE_MSG_LEN, NOISE_IK,
    NOISE_XX, PROLOGUE,
};

/// The server's whole answer to an IK message 1 it cannot decrypt: "the key you pinned is not
/// mine". It is not authenticated (nothing can be, without the key), so an attacker on the path
/// can forge it; that only ends a connection the attacker could cut anyway.
pub const REJECT_KEY_MISMATCH: u8 = 0x01;

static XX_PARAMS: LazyLock<NoiseParams> = LazyLock::new(|| {
    NOISE_XX
        .parse()
        .expect("NOISE_XX is a valid Noise protocol name")
});
static IK_PARAMS: LazyLock<NoiseParams> = LazyLock::new(|| {
    NOISE_IK
        .parse()
        .expect("NOISE_IK is a valid Noise protocol name")
});

/// Which handshake the client runs; its byte starts the client's first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Pattern {
    /// First contact: the server's key is learned (and checked against a pin, if any).
    Xx = 0x01,
    /// The server's key is pinned: one round trip.
    Ik = 0x02,
}

impl Pattern {
    fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            0x01 => Some(Pattern::Xx),
            0x02 => Some(Pattern::Ik),
            _ => None,
        }
    }

    fn params(self) -> NoiseParams {
        match self {
            Pattern::Xx => XX_PARAMS.clone(),
            Pattern::Ik => IK_PARAMS.clone(),
        }
    }
}

/// The result of a finished handshake.
#[derive(Debug)]
pub struct Established {
    /// All that is kept per connection from now on.
    pub transport: Transport,
    /// The peer's static key: the server's (as pinned or learned) or the client's.
    pub remote: PublicKey,
    pub pattern: Pattern,
    /// The Noise handshake hash: unique to this connection, for channel binding.
    pub handshake_hash: [u8; 32],
}

enum Role {
    Initiator { pinned: Option<PublicKey> },
    Responder,
}

/// One side of a handshake in progress. Feed it the peer's bytes with [`Handshake::handle`] and
/// send what it writes to `out`; it ends with an [`Established`] or an [`Error`], after which it
/// is dropped.
pub struct Handshake {
    role: Role,
    local: Keypair,
    /// The responder learns it from the first message.
    pattern: Option<Pattern>,
    /// Built by the initiator at once, by the responder when message 1 arrives.
    noise: Option<Box<snow::HandshakeState>>,
    /// Only for the test vectors: an ephemeral key instead of a random one.
    fixed_ephemeral: Option<[u8; KEY_LEN]>,
    done: bool,
}

impl Handshake {
    /// A client that does not know the server's key, or that checks it against `pinned` after
    /// the server has proved it holds it. Writes message 1 to `out`.
    pub fn initiator_xx(
        local: &Keypair,
        pinned: Option<PublicKey>,
        out: &mut BytesMut,
    ) -> Result<Self, Error> {
        Self::initiator(Pattern::Xx, local, pinned, None, out)
    }

    /// A client with the server's key pinned: one round trip. A server holding another key
    /// answers with a refusal, returned by [`Handshake::handle`] as
    /// [`Error::ServerKeyMismatch`]. Do not then retry with an unpinned XX handshake: that
    /// would accept whatever key the other end has. Writes message 1 to `out`.
    pub fn initiator_ik(
        local: &Keypair,
        pinned: PublicKey,
        out: &mut BytesMut,
    ) -> Result<Self, Error> {
        Self::initiator(Pattern::Ik, local, Some(pinned), None, out)
    }

    /// The server side; it learns the pattern from the client's first message.
    pub fn responder(local: &Keypair) -> Self {
        Self::responder_with(local, None)
    }

    pub(crate) fn initiator(
        pattern: Pattern,
        local: &Keypair,
        pinned: Option<PublicKey>,
        fixed_ephemeral: Option<[u8; KEY_LEN]>,
        out: &mut BytesMut,
    ) -> Result<Self, Error> {
        let mut builder = snow::Builder::new(pattern.params())
            .prologue(PROLOGUE)
            .and_then(|b| b.local_private_key(local.private()))
            .map_err(Error::Handshake)?;
        if pattern == Pattern::Ik {
            let server = pinned.as_ref().expect("IK always has a pinned key");
            builder = builder
                .remote_public_key(server.as_bytes())
                .map_err(Error::Handshake)?;
        }
        if let Some(e) = &fixed_ephemeral {
            builder = builder.fixed_ephemeral_key_for_testing_only(e);
        }
        let mut noise = Box::new(builder.build_initiator().map_err(Error::Handshake)?);
        let mut msg = [0; MAX_HANDSHAKE_MSG_LEN];
        msg[0] = pattern as u8;
        let n = noise
            .write_message(&[], &mut msg[1..])
            .map_err(Error::Handshake)?;
        put_message(out, &msg[..1 + n]);
        Ok(Self {
            role: Role::Initiator { pinned },
            local: local.clone(),
            pattern: Some(pattern),
            noise: Some(noise),
            fixed_ephemeral,
            done: false,
        })
    }

    pub(crate) fn responder_with(local: &Keypair, fixed_ephemeral: Option<[u8; KEY_LEN]>) -> Self {
        Self {
            role: Role::Responder,
            local: local.clone(),
            pattern: None,
            noise: None,
            fixed_ephemeral,
            done: false,
        }
    }

    /// Takes whole handshake messages off the front of `input` and writes replies to `out`.
    /// `Ok(None)`: more bytes are needed. `Ok(Some(_))`: done; bytes after the last handshake
    /// message (the first records) stay in `input` for the [`Transport`]. On `Err`, send what
    /// `out` holds (a refusal, perhaps) and close.
    pub fn handle(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<Established>, Error> {
        loop {
            if self.done {
                return Err(Error::HandshakeDone);
            }
            let Some(len) = self.peek_message_len(input)? else {
                return Ok(None);
            };
            if input.len() < LEN_BYTES + len {
                return Ok(None);
            }
            input.advance(LEN_BYTES);
            let msg = input.split_to(len);
            let finished = match self.role {
                Role::Responder => self.responder_read(&msg, out)?,
                Role::Initiator { pinned } => self.initiator_read(&msg, pinned, out)?,
            };
            if finished {
                self.done = true;
                return self.establish().map(Some);
            }
        }
    }

    fn peek_message_len(&self, input: &[u8]) -> Result<Option<usize>, Error> {
        if input.len() < LEN_BYTES {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([input[0], input[1]]));
        if len == 0 && matches!(self.role, Role::Responder) && self.noise.is_none() {
            return Err(Error::PlaintextPeer);
        }
        if len == 0 || len > MAX_HANDSHAKE_MSG_LEN {
            return Err(Error::HandshakeMsgLen {
                len,
                max: MAX_HANDSHAKE_MSG_LEN,
            });
        }
        Ok(Some(len))
    }

    /// Reads message 1 (and answers it) or message 3; true when the handshake is over.
    fn responder_read(&mut self, msg: &[u8], out: &mut BytesMut) -> Result<bool, Error> {
        let mut payload = [0; MAX_HANDSHAKE_MSG_LEN];
        let Some(noise) = self.noise.as_mut() else {
            let pattern = Pattern::from_u8(msg[0]).ok_or(Error::UnknownPattern(msg[0]))?;
            let mut builder = snow::Builder::new(pattern.params())
                .prologue(PROLOGUE)
                .and_then(|b| b.local_private_key(self.local.private()))
                .map_err(Error::Handshake)?;
            if let Some(e) = &self.fixed_ephemeral {
                builder = builder.fixed_ephemeral_key_for_testing_only(e);
            }
            let mut noise = Box::new(builder.build_responder().map_err(Error::Handshake)?);
            match noise.read_message(&msg[1..], &mut payload) {
                Ok(_) => {}
                Err(snow::Error::Decrypt) if pattern == Pattern::Ik => {
                    put_message(out, &[REJECT_KEY_MISMATCH]);
                    return Err(Error::ClientPinnedOtherKey);
                }
                Err(e) => return Err(Error::Handshake(e)),
            }
            let mut reply = [0; MAX_HANDSHAKE_MSG_LEN];
            let n = noise
                .write_message(&[], &mut reply)
                .map_err(Error::Handshake)?;
            put_message(out, &reply[..n]);
            self.pattern = Some(pattern);
            let finished = noise.is_handshake_finished();
            self.noise = Some(noise);
            return Ok(finished);
        };
        noise
            .read_message(msg, &mut payload)
            .map_err(Error::Handshake)?;
        Ok(noise.is_handshake_finished())
    }

    /// Reads message 2, checks the server's key, and writes message 3 (XX).
    fn initiator_read(
        &mut self,
        msg: &[u8],
        pinned: Option<PublicKey>,
        out: &mut BytesMut,
    ) -> Result<bool, Error> {
        let noise = self
            .noise
            .as_mut()
            .expect("an initiator is built with its state");
        if self.pattern == Some(Pattern::Ik) && msg == [REJECT_KEY_MISMATCH] {
            return Err(Error::ServerKeyMismatch {
                pinned: pinned.expect("IK always has a pinned key"),
                presented: None,
            });
        }
        let mut payload = [0; MAX_HANDSHAKE_MSG_LEN];
        noise
            .read_message(msg, &mut payload)
            .map_err(Error::Handshake)?;
        let presented = noise
            .get_remote_static()
            .and_then(PublicKey::from_slice)
            .expect("message 2 carries or confirms the server's static key");
        if let Some(pinned) = pinned {
            if presented != pinned {
                return Err(Error::ServerKeyMismatch {
                    pinned,
                    presented: Some(presented),
                });
            }
        }
        if !noise.is_handshake_finished() {
            let mut reply = [0; MAX_HANDSHAKE_MSG_LEN];
            let n = noise
                .write_message(&[], &mut reply)
                .map_err(Error::Handshake)?;
            put_message(out, &reply[..n]);
        }
        Ok(noise.is_handshake_finished())
    }

    fn establish(&mut self) -> Result<Established, Error> {
        let mut noise = self
            .noise
            .take()
            .expect("a finished handshake has its state");
        let remote = noise
            .get_remote_static()
            .and_then(PublicKey::from_slice)
            .expect("both patterns authenticate both static keys");
        let mut handshake_hash = [0; 32];
        handshake_hash.copy_from_slice(noise.get_handshake_hash());
        let (initiator_to_responder, responder_to_initiator) = noise.dangerously_get_raw_split();
        let transport = match self.role {
            Role::Initiator { .. } => {
                Transport::new(&initiator_to_responder, &responder_to_initiator)
            }
            Role::Responder => Transport::new(&responder_to_initiator, &initiator_to_responder),
        };
        Ok(Established {
            transport,
            remote,
            pattern: self.pattern.expect("set before the handshake can finish"),
            handshake_hash,
        })
    }
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("pattern", &self.pattern)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

fn put_message(out: &mut BytesMut, body: &[u8]) {
    out.reserve(LEN_BYTES + body.len());
    out.put_u16(body.len() as u16);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests;
