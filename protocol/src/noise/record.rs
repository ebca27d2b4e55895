//! The record layer: what each side keeps after the handshake, and how records are sealed and
//! opened.

use bytes::{Buf, BufMut, BytesMut};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use zeroize::Zeroize;

use super::{Error, KEY_LEN, LEN_BYTES};

/// Bytes of the Poly1305 tag at the end of every record.
pub const TAG_LEN: usize = 16;
/// The largest record body (ciphertext + tag): Noise's message limit, and what a u16 can say.
pub const MAX_RECORD_LEN: usize = u16::MAX as usize;
/// The most plaintext one record carries.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD_LEN - TAG_LEN;

/// One side of an established encrypted connection: the two keys from the Noise `Split()` and
/// a nonce counter for each direction. Nothing else of the handshake is kept. The keys are
/// wiped on drop. Not `Clone`: two copies would seal with the same nonces.
///
/// The keys are kept raw, and ring's cipher object (544 bytes, sized for AES key schedules) is
/// built on the stack for each record: for ChaCha20 that is a 32-byte copy (which ring does not
/// wipe; the stack slot is reused by the next record).
pub struct Transport {
    send_key: [u8; KEY_LEN],
    recv_key: [u8; KEY_LEN],
    send_nonce: u64, // next nonce to seal with
    recv_nonce: u64, // next nonce expected
}

impl Transport {
    pub(crate) fn new(send_key: &[u8; KEY_LEN], recv_key: &[u8; KEY_LEN]) -> Self {
        Self {
            send_key: *send_key,
            recv_key: *recv_key,
            send_nonce: 0,
            recv_nonce: 0,
        }
    }

    /// Seals `plaintext` as records appended to `out`: one record per [`MAX_RECORD_PLAINTEXT`]
    /// bytes, and one empty record for an empty `plaintext`. Allocates only if `out` must grow.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut BytesMut) -> Result<(), Error> {
        let records = plaintext.len().div_ceil(MAX_RECORD_PLAINTEXT).max(1);
        if self.send_nonce.checked_add(records as u64).is_none() {
            return Err(Error::NonceExhausted);
        }
        out.reserve(plaintext.len() + records * (LEN_BYTES + TAG_LEN));
        let mut chunks = plaintext.chunks(MAX_RECORD_PLAINTEXT);
        for _ in 0..records {
            let chunk = chunks.next().unwrap_or_default();
            out.put_u16((chunk.len() + TAG_LEN) as u16);
            let start = out.len();
            out.extend_from_slice(chunk);
            let tag = cipher(&self.send_key)
                .seal_in_place_separate_tag(nonce(self.send_nonce), Aad::empty(), &mut out[start..])
                .expect("a record is far below ChaCha20-Poly1305's length limit");
            out.extend_from_slice(tag.as_ref());
            self.send_nonce += 1;
        }
        Ok(())
    }

    /// Takes one record off the front of `input` and appends its plaintext to `out`, returning
    /// the plaintext length; `Ok(None)` when the record is not all there yet. A length over
    /// `max_record_len` (clamped to [`MAX_RECORD_LEN`]) is refused from the 2-byte prefix alone;
    /// `input` is never reserved for a body that has not arrived.
    pub fn open(
        &mut self,
        input: &mut BytesMut,
        max_record_len: usize,
        out: &mut BytesMut,
    ) -> Result<Option<usize>, Error> {
        let Some(len) = peek_record_len(input, max_record_len)? else {
            return Ok(None);
        };
        if input.len() < LEN_BYTES + len {
            return Ok(None);
        }
        if self.recv_nonce == u64::MAX {
            return Err(Error::NonceExhausted);
        }
        let text_len = len - TAG_LEN;
        let start = out.len();
        out.extend_from_slice(&input[LEN_BYTES..LEN_BYTES + len]);
        let opened = cipher(&self.recv_key).open_in_place(
            nonce(self.recv_nonce),
            Aad::empty(),
            &mut out[start..],
        );
        if opened.is_err() {
            out.truncate(start);
            return Err(Error::RecordAuth);
        }
        out.truncate(start + text_len);
        self.recv_nonce += 1;
        input.advance(LEN_BYTES + len);
        Ok(Some(text_len))
    }

    /// Opens every whole record at the front of `input`; returns the plaintext bytes appended.
    pub fn open_all(
        &mut self,
        input: &mut BytesMut,
        max_record_len: usize,
        out: &mut BytesMut,
    ) -> Result<usize, Error> {
        let mut total = 0;
        while let Some(n) = self.open(input, max_record_len, out)? {
            total += n;
        }
        Ok(total)
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("send_nonce", &self.send_nonce)
            .field("recv_nonce", &self.recv_nonce)
            .finish_non_exhaustive()
    }
}

/// The body length of the record at the front of `buf` once its prefix is there; checks it
/// against the limit and the tag length.
pub(crate) fn peek_record_len(buf: &[u8], max_record_len: usize) -> Result<Option<usize>, Error> {
    if buf.len() < LEN_BYTES {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    let max = max_record_len.min(MAX_RECORD_LEN);
    if len > max {
        return Err(Error::RecordTooLarge { len, max });
    }
    if len < TAG_LEN {
        return Err(Error::RecordTooShort { len });
    }
    Ok(Some(len))
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.send_key.zeroize();
        self.recv_key.zeroize();
    }
}

fn cipher(key: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, key).expect("a ChaCha20-Poly1305 key is 32 bytes"),
    )
}

/// Noise's ChaChaPoly nonce: 32 zero bits, then the 64-bit counter little-endian. Each counter
/// value is used once per key: the counters only go up.
fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0; 12];
    bytes[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(bytes)
}

#[cfg(test)]
mod tests;
