/**
 * Records after the handshake (protocol/NOISE.md section 3): each direction has a key and a
 * nonce counter from 0; each record is one Noise transport message, framed with a 2-byte length.
 *
 * ```text
 *  0        2                                      2+len-16        2+len
 * +--------+--------------------------------------+---------------+
 * |  len   |  ciphertext (len - 16 bytes)         |  tag (16)     |
 * | u16 BE |  ChaCha20 of the plaintext           |  Poly1305     |
 * +--------+--------------------------------------+---------------+
 *  nonce = 00 00 00 00 || counter u64 little-endian; no associated data
 * ```
 *
 * The plaintext of consecutive records is one byte stream of Courier frames: a frame may span
 * records and a record may hold several.
 */

import { ChaChaPoly, TAG_LEN } from "./chachapoly.js";
import { NoiseError } from "./keys.js";

/** The largest record (`len`): the u16 ceiling. */
export const MAX_RECORD_LEN = 0xffff;
/** The most plaintext one record carries. */
export const MAX_RECORD_PLAINTEXT = MAX_RECORD_LEN - TAG_LEN;
const LEN_BYTES = 2;
const EMPTY = new Uint8Array(0);
/**
 * Nonces are counted in a double: exact up to 2^53, so the counter stops there (never reached:
 * at a million records a second that is 285 years), short of Noise's 2^64 - 1.
 */
const MAX_NONCE = Number.MAX_SAFE_INTEGER;

/** Noise's 12-byte ChaChaPoly nonce: 4 zero bytes, then the counter `n` little-endian. */
export function writeNonce(nonce: Uint8Array, n: number): void {
  nonce[0] = nonce[1] = nonce[2] = nonce[3] = 0;
  const lo = n >>> 0;
  const hi = Math.floor(n / 0x100000000) >>> 0;
  for (let i = 0; i < 4; i++) {
    nonce[4 + i] = lo >>> (8 * i);
    nonce[8 + i] = hi >>> (8 * i);
  }
}

/** Both directions of an established connection: two keys and two counters. */
export class Transport {
  private readonly sender: ChaChaPoly;
  private readonly receiver: ChaChaPoly;
  private sendNonce = 0;
  private recvNonce = 0;
  private readonly sendNonceBytes = new Uint8Array(12);
  private readonly recvNonceBytes = new Uint8Array(12);
  /** Received bytes not yet opened: at most one partial record, grown as bytes arrive. */
  private pending = new Uint8Array(0);
  private pendingLen = 0;

  /** `sendKey` encrypts what this side sends; `recvKey` opens what it receives. */
  constructor(sendKey: Uint8Array, recvKey: Uint8Array) {
    this.sender = new ChaChaPoly(sendKey);
    this.receiver = new ChaChaPoly(recvKey);
  }

  /**
   * Seals `plaintext` as one record, or as several when it is longer than
   * {@link MAX_RECORD_PLAINTEXT}; returns them as one array to write. Empty input makes one
   * empty record (len 16), which is valid.
   */
  seal(plaintext: Uint8Array): Uint8Array {
    const records = Math.max(1, Math.ceil(plaintext.length / MAX_RECORD_PLAINTEXT));
    const out = new Uint8Array(plaintext.length + records * (LEN_BYTES + TAG_LEN));
    let at = 0;
    for (let from = 0, r = 0; r < records; r++, from += MAX_RECORD_PLAINTEXT) {
      const chunk = plaintext.subarray(from, Math.min(from + MAX_RECORD_PLAINTEXT, plaintext.length));
      if (this.sendNonce >= MAX_NONCE) throw new NoiseError({ kind: "NonceExhausted" });
      const len = chunk.length + TAG_LEN;
      out[at] = len >>> 8;
      out[at + 1] = len & 0xff;
      writeNonce(this.sendNonceBytes, this.sendNonce++);
      this.sender.sealInto(this.sendNonceBytes, EMPTY, chunk, out, at + LEN_BYTES);
      at += LEN_BYTES + len;
    }
    return out;
  }

  /**
   * Bytes received, split anywhere: returns the plaintext of every record they complete, in
   * order (possibly none). A record's length is checked against `maxRecordLen` from its prefix
   * alone, before its body is buffered. Throws {@link NoiseError} for a bad length or a record
   * that fails authentication; the connection must then be closed.
   */
  open(bytes: Uint8Array, maxRecordLen = MAX_RECORD_LEN): Uint8Array[] {
    const out: Uint8Array[] = [];
    let input = bytes;
    if (this.pendingLen > 0) {
      input = this.takePending(bytes);
    }
    let at = 0;
    while (input.length - at >= LEN_BYTES) {
      const len = (input[at]! << 8) | input[at + 1]!;
      if (len > maxRecordLen) throw new NoiseError({ kind: "RecordTooLarge", len, max: maxRecordLen });
      if (len < TAG_LEN) throw new NoiseError({ kind: "RecordTooShort", len });
      if (input.length - at < LEN_BYTES + len) break;
      if (this.recvNonce >= MAX_NONCE) throw new NoiseError({ kind: "NonceExhausted" });
      writeNonce(this.recvNonceBytes, this.recvNonce);
      const plain = this.receiver.open(this.recvNonceBytes, EMPTY, input.subarray(at + LEN_BYTES, at + LEN_BYTES + len));
      if (plain === undefined) throw new NoiseError({ kind: "RecordAuth" });
      this.recvNonce++;
      out.push(plain);
      at += LEN_BYTES + len;
    }
    this.keepPending(input.subarray(at));
    return out;
  }

  /** The pending bytes followed by `bytes`, as one array (the pending buffer is reused). */
  private takePending(bytes: Uint8Array): Uint8Array {
    const need = this.pendingLen + bytes.length;
    if (need > this.pending.length) {
      // Grows with what arrived, never to the size a length prefix announces.
      const grown = new Uint8Array(Math.max(need, 2 * this.pending.length));
      grown.set(this.pending.subarray(0, this.pendingLen));
      this.pending = grown;
    }
    this.pending.set(bytes, this.pendingLen);
    const all = this.pending.subarray(0, need);
    this.pendingLen = 0;
    return all;
  }

  private keepPending(rest: Uint8Array): void {
    if (rest.length === 0) {
      // An idle connection keeps no buffer.
      if (this.pending.length > 4096) this.pending = new Uint8Array(0);
      return;
    }
    if (rest.buffer === this.pending.buffer) {
      this.pending.copyWithin(0, rest.byteOffset, rest.byteOffset + rest.length);
    } else {
      if (rest.length > this.pending.length) this.pending = new Uint8Array(rest.length);
      this.pending.set(rest);
    }
    this.pendingLen = rest.length;
  }

  /** Records sent and received so far (the next nonces). */
  get counters(): { sent: number; received: number } {
    return { sent: this.sendNonce, received: this.recvNonce };
  }
}
