/**
 * ChaCha20 and Poly1305, and their AEAD construction (RFC 8439), as Noise's `ChaChaPoly`
 * cipher uses them: a 32-byte key, a 12-byte nonce (4 zero bytes + the 64-bit counter
 * little-endian), associated data, a 16-byte tag after the ciphertext.
 *
 * Constant time where it matters: ChaCha20 is adds, xors and rotations; Poly1305 keeps its
 * 130-bit numbers in ten 13-bit limbs held in doubles (every product and sum stays below 2^53,
 * so the arithmetic is exact), reduces with carries and a masked final subtraction, and the tag
 * is compared without an early exit.
 */

export const KEY_LEN = 32;
export const NONCE_LEN = 12;
export const TAG_LEN = 16;

/** "expand 32-byte k" as four little-endian words. */
const SIGMA0 = 0x61707865;
const SIGMA1 = 0x3320646e;
const SIGMA2 = 0x79622d32;
const SIGMA3 = 0x6b206574;

function load32(b: Uint8Array, i: number): number {
  return (b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24)) >>> 0;
}

/**
 * ChaCha20 state for one key; writes keystream blocks. Reused for every record of a
 * connection, so sealing and opening allocate only their output.
 */
export class ChaCha20 {
  private readonly input = new Uint32Array(16);
  private readonly x = new Uint32Array(16);
  /** One keystream block, as bytes. */
  readonly block = new Uint8Array(64);
  private readonly blockWords = new Uint32Array(this.block.buffer);

  constructor(key: Uint8Array) {
    if (key.length !== KEY_LEN) throw new RangeError(`ChaCha20 key must be 32 bytes, got ${key.length}`);
    const s = this.input;
    s[0] = SIGMA0;
    s[1] = SIGMA1;
    s[2] = SIGMA2;
    s[3] = SIGMA3;
    for (let i = 0; i < 8; i++) s[4 + i] = load32(key, 4 * i);
  }

  /** Sets the 12-byte nonce (words 13..15 of the state). */
  setNonce(nonce: Uint8Array): void {
    this.input[13] = load32(nonce, 0);
    this.input[14] = load32(nonce, 4);
    this.input[15] = load32(nonce, 8);
  }

  /** Computes the keystream block for `counter` into {@link block}. */
  keystream(counter: number): Uint8Array {
    const s = this.input;
    const x = this.x;
    s[12] = counter;
    x.set(s);
    for (let i = 0; i < 10; i++) {
      quarter(x, 0, 4, 8, 12);
      quarter(x, 1, 5, 9, 13);
      quarter(x, 2, 6, 10, 14);
      quarter(x, 3, 7, 11, 15);
      quarter(x, 0, 5, 10, 15);
      quarter(x, 1, 6, 11, 12);
      quarter(x, 2, 7, 8, 13);
      quarter(x, 3, 4, 9, 14);
    }
    const w = this.blockWords;
    if (LITTLE_ENDIAN) {
      for (let i = 0; i < 16; i++) w[i] = x[i]! + s[i]!;
    } else {
      for (let i = 0; i < 16; i++) {
        const v = (x[i]! + s[i]!) >>> 0;
        this.block[4 * i] = v;
        this.block[4 * i + 1] = v >>> 8;
        this.block[4 * i + 2] = v >>> 16;
        this.block[4 * i + 3] = v >>> 24;
      }
    }
    return this.block;
  }

  /** XORs the keystream starting at block `counter` into `data`, writing `out` (may alias). */
  xor(counter: number, data: Uint8Array, out: Uint8Array): void {
    for (let off = 0; off < data.length; off += 64, counter++) {
      const ks = this.keystream(counter);
      const n = Math.min(64, data.length - off);
      for (let i = 0; i < n; i++) out[off + i] = data[off + i]! ^ ks[i]!;
    }
  }

  /** Wipes the key from memory. */
  wipe(): void {
    this.input.fill(0);
    this.x.fill(0);
    this.block.fill(0);
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function quarter(x: Uint32Array, a: number, b: number, c: number, d: number): void {
  let va = x[a]!, vb = x[b]!, vc = x[c]!, vd = x[d]!;
  va = (va + vb) | 0;
  vd ^= va;
  vd = (vd << 16) | (vd >>> 16);
  vc = (vc + vd) | 0;
  vb ^= vc;
  vb = (vb << 12) | (vb >>> 20);
  va = (va + vb) | 0;
  vd ^= va;
  vd = (vd << 8) | (vd >>> 24);
  vc = (vc + vd) | 0;
  vb ^= vc;
  vb = (vb << 7) | (vb >>> 25);
  x[a] = va;
  x[b] = vb;
  x[c] = vc;
  x[d] = vd;
}

const LIMBS = 10;
const LIMB_BITS = 13;
const LIMB_MASK = 0x1fff;
const LIMB_BASE = 1 << LIMB_BITS;

/** Splits 16 bytes (plus `hibit` as bit 128) into ten 13-bit limbs. */
function toLimbs(b: Uint8Array, off: number, hibit: number, out: Float64Array): void {
  let acc = 0;
  let accBits = 0;
  let i = 0;
  for (let limb = 0; limb < LIMBS; limb++) {
    while (accBits < LIMB_BITS) {
      acc += (i < 16 ? b[off + i]! : i === 16 ? hibit : 0) * 2 ** accBits;
      i++;
      accBits += 8;
    }
    const v = acc % LIMB_BASE;
    out[limb] = v;
    acc = (acc - v) / LIMB_BASE;
    accBits -= LIMB_BITS;
  }
}

/** Poly1305 (RFC 8439 section 2.5) over a sequence of `update`s. */
export class Poly1305 {
  private readonly r = new Float64Array(LIMBS);
  private readonly h = new Float64Array(LIMBS);
  private readonly m = new Float64Array(LIMBS);
  private readonly s = new Uint8Array(16);
  private readonly partial = new Uint8Array(16);
  private partialLen = 0;

  /** `key` is the 32-byte one-time key: r (clamped) then s. */
  constructor(key: Uint8Array) {
    this.reset(key);
  }

  /** Starts a new MAC with another one-time key, reusing this object's memory. */
  reset(key: Uint8Array): this {
    const r = this.partial;
    r.set(key.subarray(0, 16));
    r[3]! &= 15;
    r[7]! &= 15;
    r[11]! &= 15;
    r[15]! &= 15;
    r[4]! &= 252;
    r[8]! &= 252;
    r[12]! &= 252;
    toLimbs(r, 0, 0, this.r);
    r.fill(0);
    this.partialLen = 0;
    this.h.fill(0);
    this.s.set(key.subarray(16, 32));
    return this;
  }

  update(data: Uint8Array): this {
    let i = 0;
    if (this.partialLen > 0) {
      const take = Math.min(16 - this.partialLen, data.length);
      this.partial.set(data.subarray(0, take), this.partialLen);
      this.partialLen += take;
      i = take;
      if (this.partialLen < 16) return this;
      this.blocks(this.partial, 0, 16, 1);
      this.partialLen = 0;
    }
    const whole = (data.length - i) & ~15;
    if (whole > 0) this.blocks(data, i, whole, 1);
    i += whole;
    if (i < data.length) {
      this.partial.set(data.subarray(i));
      this.partialLen = data.length - i;
    }
    return this;
  }

  /** Feeds zero bytes up to the next multiple of 16 (the AEAD's padding). */
  pad16(): this {
    if (this.partialLen > 0) {
      this.partial.fill(0, this.partialLen);
      this.blocks(this.partial, 0, 16, 1);
      this.partialLen = 0;
    }
    return this;
  }

  /**
   * h = (h + block) * r mod 2^130 - 5, partly reduced, for each 16-byte block of `b` from
   * `off` (`len` a multiple of 16); `hibit` is the block's bit 128 (1, or 0 for the padded
   * last block). Unrolled over locals: the hot loop of a record.
   */
  private blocks(b: Uint8Array, off: number, len: number, hibit: number): void {
    const hr = this.h, rr = this.r;
    let h0 = hr[0]!, h1 = hr[1]!, h2 = hr[2]!, h3 = hr[3]!, h4 = hr[4]!, h5 = hr[5]!, h6 = hr[6]!, h7 = hr[7]!, h8 = hr[8]!, h9 = hr[9]!;
    const r0 = rr[0]!, r1 = rr[1]!, r2 = rr[2]!, r3 = rr[3]!, r4 = rr[4]!, r5 = rr[5]!, r6 = rr[6]!, r7 = rr[7]!, r8 = rr[8]!, r9 = rr[9]!;
    const s1 = 5 * r1, s2 = 5 * r2, s3 = 5 * r3, s4 = 5 * r4, s5 = 5 * r5, s6 = 5 * r6, s7 = 5 * r7, s8 = 5 * r8, s9 = 5 * r9;
    const top = hibit << 11; // bit 128 is bit 11 of limb 9
    for (let at = off; at < off + len; at += 16) {
      const t0 = b[at + 0]! | (b[at + 1]! << 8);
      const t1 = b[at + 2]! | (b[at + 3]! << 8);
      const t2 = b[at + 4]! | (b[at + 5]! << 8);
      const t3 = b[at + 6]! | (b[at + 7]! << 8);
      const t4 = b[at + 8]! | (b[at + 9]! << 8);
      const t5 = b[at + 10]! | (b[at + 11]! << 8);
      const t6 = b[at + 12]! | (b[at + 13]! << 8);
      const t7 = b[at + 14]! | (b[at + 15]! << 8);
      h0 += (t0 >>> 0) & 0x1fff;
      h1 += ((t0 >>> 13) | (t1 << 3)) & 0x1fff;
      h2 += ((t1 >>> 10) | (t2 << 6)) & 0x1fff;
      h3 += ((t2 >>> 7) | (t3 << 9)) & 0x1fff;
      h4 += ((t3 >>> 4) | (t4 << 12)) & 0x1fff;
      h5 += (t4 >>> 1) & 0x1fff;
      h6 += ((t4 >>> 14) | (t5 << 2)) & 0x1fff;
      h7 += ((t5 >>> 11) | (t6 << 5)) & 0x1fff;
      h8 += ((t6 >>> 8) | (t7 << 8)) & 0x1fff;
      h9 += (t7 >>> 5) | top;
      const d0 = h0 * r0 + h1 * s9 + h2 * s8 + h3 * s7 + h4 * s6 + h5 * s5 + h6 * s4 + h7 * s3 + h8 * s2 + h9 * s1;
      const d1 = h0 * r1 + h1 * r0 + h2 * s9 + h3 * s8 + h4 * s7 + h5 * s6 + h6 * s5 + h7 * s4 + h8 * s3 + h9 * s2;
      const d2 = h0 * r2 + h1 * r1 + h2 * r0 + h3 * s9 + h4 * s8 + h5 * s7 + h6 * s6 + h7 * s5 + h8 * s4 + h9 * s3;
      const d3 = h0 * r3 + h1 * r2 + h2 * r1 + h3 * r0 + h4 * s9 + h5 * s8 + h6 * s7 + h7 * s6 + h8 * s5 + h9 * s4;
      const d4 = h0 * r4 + h1 * r3 + h2 * r2 + h3 * r1 + h4 * r0 + h5 * s9 + h6 * s8 + h7 * s7 + h8 * s6 + h9 * s5;
      const d5 = h0 * r5 + h1 * r4 + h2 * r3 + h3 * r2 + h4 * r1 + h5 * r0 + h6 * s9 + h7 * s8 + h8 * s7 + h9 * s6;
      const d6 = h0 * r6 + h1 * r5 + h2 * r4 + h3 * r3 + h4 * r2 + h5 * r1 + h6 * r0 + h7 * s9 + h8 * s8 + h9 * s7;
      const d7 = h0 * r7 + h1 * r6 + h2 * r5 + h3 * r4 + h4 * r3 + h5 * r2 + h6 * r1 + h7 * r0 + h8 * s9 + h9 * s8;
      const d8 = h0 * r8 + h1 * r7 + h2 * r6 + h3 * r5 + h4 * r4 + h5 * r3 + h6 * r2 + h7 * r1 + h8 * r0 + h9 * s9;
      const d9 = h0 * r9 + h1 * r8 + h2 * r7 + h3 * r6 + h4 * r5 + h5 * r4 + h6 * r3 + h7 * r2 + h8 * r1 + h9 * r0;
      // Carry: each d < 2^33, so d / 2^13 truncated by `| 0` is exact and non-negative.
      let c = (d0 / 8192) | 0;
      h0 = d0 - c * 8192;
      const e1 = d1 + c;
      c = (e1 / 8192) | 0;
      h1 = e1 - c * 8192;
      const e2 = d2 + c;
      c = (e2 / 8192) | 0;
      h2 = e2 - c * 8192;
      const e3 = d3 + c;
      c = (e3 / 8192) | 0;
      h3 = e3 - c * 8192;
      const e4 = d4 + c;
      c = (e4 / 8192) | 0;
      h4 = e4 - c * 8192;
      const e5 = d5 + c;
      c = (e5 / 8192) | 0;
      h5 = e5 - c * 8192;
      const e6 = d6 + c;
      c = (e6 / 8192) | 0;
      h6 = e6 - c * 8192;
      const e7 = d7 + c;
      c = (e7 / 8192) | 0;
      h7 = e7 - c * 8192;
      const e8 = d8 + c;
      c = (e8 / 8192) | 0;
      h8 = e8 - c * 8192;
      const e9 = d9 + c;
      c = (e9 / 8192) | 0;
      h9 = e9 - c * 8192;
      // 2^130 = 5 (mod p).
      h0 += 5 * c;
      c = h0 >>> 13;
      h0 &= 0x1fff;
      h1 += c;
    }
    hr[0] = h0;
    hr[1] = h1;
    hr[2] = h2;
    hr[3] = h3;
    hr[4] = h4;
    hr[5] = h5;
    hr[6] = h6;
    hr[7] = h7;
    hr[8] = h8;
    hr[9] = h9;
  }

  /** Writes the 16-byte tag to `out` at `off`. */
  finish(out: Uint8Array, off = 0): void {
    if (this.partialLen > 0) {
      // The last short block gets a 1 byte after it instead of bit 128.
      this.partial[this.partialLen] = 1;
      this.partial.fill(0, this.partialLen + 1);
      this.blocks(this.partial, 0, 16, 0);
      this.partialLen = 0;
    }
    const h = this.h;
    // Fully carry: every limb below 2^13, the top one taking what is above bit 130 back as 5s.
    for (let pass = 0; pass < 2; pass++) {
      let c = 0;
      for (let i = 0; i < LIMBS; i++) {
        const v = h[i]! + c;
        c = Math.floor(v / LIMB_BASE);
        h[i] = v - c * LIMB_BASE;
      }
      h[0]! += 5 * c;
    }
    // g = h + 5 - 2^130; if it does not go negative, h >= p and g is h mod p. Chosen by mask.
    const g = this.m;
    let c = 5;
    for (let i = 0; i < LIMBS; i++) {
      const v = h[i]! + c;
      c = v >>> LIMB_BITS;
      g[i] = v & LIMB_MASK;
    }
    const useG = -c; // c is the bit 130 of h + 5: all ones when h >= p
    for (let i = 0; i < LIMBS; i++) h[i] = (h[i]! & ~useG) | (g[i]! & useG);
    // h mod 2^128 + s, written little-endian.
    let acc = 0;
    let accBits = 0;
    let carry = 0;
    let byte = 0;
    for (let i = 0; i < LIMBS && byte < 16; i++) {
      acc |= h[i]! << accBits;
      accBits += LIMB_BITS;
      while (accBits >= 8 && byte < 16) {
        const v = (acc & 0xff) + this.s[byte]! + carry;
        out[off + byte] = v;
        carry = v >>> 8;
        acc >>>= 8;
        accBits -= 8;
        byte++;
      }
    }
    h.fill(0);
    this.r.fill(0);
    this.s.fill(0);
  }
}

/** Poly1305 of a whole message with a one-time key. */
export function poly1305(key: Uint8Array, msg: Uint8Array): Uint8Array {
  const tag = new Uint8Array(TAG_LEN);
  new Poly1305(key).update(msg).finish(tag);
  return tag;
}

/** Compares two equal-length byte strings without stopping at the first difference. */
export function equalConstantTime(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/** Writes the 8-byte little-endian length (below 2^53) into the MAC. */
function lengthBlock(aadLen: number, ctLen: number, out: Uint8Array): Uint8Array {
  const put = (v: number, at: number) => {
    const lo = v >>> 0;
    const hi = Math.floor(v / 0x100000000);
    for (let i = 0; i < 4; i++) {
      out[at + i] = lo >>> (8 * i);
      out[at + 4 + i] = hi >>> (8 * i);
    }
  };
  put(aadLen, 0);
  put(ctLen, 8);
  return out;
}

/**
 * ChaCha20-Poly1305 with one key (RFC 8439 section 2.8). `seal` and `open` take the nonce and
 * associated data per call; the state is reused, so each call allocates only what it returns.
 */
export class ChaChaPoly {
  private readonly chacha: ChaCha20;
  private readonly polyKey = new Uint8Array(32);
  private readonly lengths = new Uint8Array(16);
  private readonly expected = new Uint8Array(TAG_LEN);
  private readonly poly: Poly1305;

  constructor(key: Uint8Array) {
    this.chacha = new ChaCha20(key);
    this.poly = new Poly1305(this.polyKey);
  }

  private mac(nonce: Uint8Array, ad: Uint8Array, ct: Uint8Array, tagOut: Uint8Array, tagOff: number): void {
    this.chacha.setNonce(nonce);
    this.polyKey.set(this.chacha.keystream(0).subarray(0, 32));
    const p = this.poly.reset(this.polyKey);
    this.polyKey.fill(0);
    p.update(ad).pad16().update(ct).pad16().update(lengthBlock(ad.length, ct.length, this.lengths));
    p.finish(tagOut, tagOff);
  }

  /**
   * Encrypts `plaintext` into `out` at `off` (ciphertext then the 16-byte tag; `out` needs
   * plaintext.length + 16 bytes from `off`).
   */
  sealInto(nonce: Uint8Array, ad: Uint8Array, plaintext: Uint8Array, out: Uint8Array, off = 0): void {
    const ct = out.subarray(off, off + plaintext.length);
    this.chacha.setNonce(nonce);
    this.chacha.xor(1, plaintext, ct);
    this.mac(nonce, ad, ct, out, off + plaintext.length);
  }

  seal(nonce: Uint8Array, ad: Uint8Array, plaintext: Uint8Array): Uint8Array {
    const out = new Uint8Array(plaintext.length + TAG_LEN);
    this.sealInto(nonce, ad, plaintext, out);
    return out;
  }

  /**
   * Checks the tag of `sealed` (ciphertext + tag) and returns the plaintext, or undefined if
   * it fails authentication (nothing of it is released then).
   */
  open(nonce: Uint8Array, ad: Uint8Array, sealed: Uint8Array): Uint8Array | undefined {
    if (sealed.length < TAG_LEN) return undefined;
    const ct = sealed.subarray(0, sealed.length - TAG_LEN);
    this.mac(nonce, ad, ct, this.expected, 0);
    if (!equalConstantTime(this.expected, sealed.subarray(ct.length))) return undefined;
    const out = new Uint8Array(ct.length);
    this.chacha.setNonce(nonce);
    this.chacha.xor(1, ct, out);
    return out;
  }

  wipe(): void {
    this.chacha.wipe();
    this.poly.reset(this.polyKey);
  }
}
