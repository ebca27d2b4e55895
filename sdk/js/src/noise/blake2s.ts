/**
 * BLAKE2s (RFC 7693): 32-bit words, 64-byte blocks, digests of 1..32 bytes, optional key of
 * up to 32 bytes. Noise uses it unkeyed with a 32-byte digest (HASHLEN 32, BLOCKLEN 64); the
 * key and the shorter digests are here for RFC 7693's self-test. Nothing in it branches on the
 * data (the compression function is a fixed sequence of adds, xors and rotations).
 */

export const BLAKE2S_BLOCK_LEN = 64;
export const BLAKE2S_OUT_LEN = 32;

const IV = new Uint32Array([
  0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
]);

/** The message word schedule: SIGMA[round] permutes the 16 words (RFC 7693 section 2.7). */
const SIGMA = new Uint8Array([
  0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
  14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3,
  11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4,
  7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8,
  9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13,
  2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9,
  12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11,
  13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10,
  6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5,
  10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0,
]);

/** An incremental BLAKE2s: `update` any number of times, then `digest` once. */
export class Blake2s {
  private readonly h = new Uint32Array(8);
  private readonly v = new Uint32Array(16);
  private readonly m = new Uint32Array(16);
  private readonly block = new Uint8Array(BLAKE2S_BLOCK_LEN);
  private blockLen = 0;
  /** Bytes compressed so far (t in RFC 7693); below 2^53, far past any input here. */
  private total = 0;
  private finished = false;

  constructor(
    private readonly outLen = BLAKE2S_OUT_LEN,
    key?: Uint8Array,
  ) {
    const keyLen = key?.length ?? 0;
    if (!Number.isInteger(outLen) || outLen < 1 || outLen > 32) {
      throw new RangeError(`BLAKE2s digest length must be 1..32 bytes, got ${outLen}`);
    }
    if (keyLen > 32) throw new RangeError(`BLAKE2s key must be at most 32 bytes, got ${keyLen}`);
    this.h.set(IV);
    // Parameter block: digest length, key length, fanout 1, depth 1 (sequential mode).
    this.h[0] = (this.h[0]! ^ 0x01010000 ^ (keyLen << 8) ^ outLen) >>> 0;
    if (key !== undefined && keyLen > 0) {
      this.block.set(key);
      this.blockLen = BLAKE2S_BLOCK_LEN; // the key fills a whole zero-padded block
    }
  }

  update(data: Uint8Array): this {
    if (this.finished) throw new Error("BLAKE2s: update after digest");
    let i = 0;
    while (i < data.length) {
      // The last block must be compressed with the final flag, so a full block waits here
      // until more data shows it is not the last.
      if (this.blockLen === BLAKE2S_BLOCK_LEN) {
        this.total += BLAKE2S_BLOCK_LEN;
        this.compress(false);
        this.blockLen = 0;
      }
      const take = Math.min(BLAKE2S_BLOCK_LEN - this.blockLen, data.length - i);
      this.block.set(data.subarray(i, i + take), this.blockLen);
      this.blockLen += take;
      i += take;
    }
    return this;
  }

  /** Writes the digest to `out` (a new array by default) and returns it. */
  digest(out: Uint8Array = new Uint8Array(this.outLen)): Uint8Array {
    if (this.finished) throw new Error("BLAKE2s: digest called twice");
    this.finished = true;
    this.total += this.blockLen;
    this.block.fill(0, this.blockLen);
    this.compress(true);
    for (let i = 0; i < this.outLen; i++) out[i] = this.h[i >> 2]! >>> (8 * (i & 3));
    return out;
  }

  private compress(last: boolean): void {
    const { h, v, m, block } = this;
    for (let i = 0; i < 16; i++) {
      const j = 4 * i;
      m[i] = block[j]! | (block[j + 1]! << 8) | (block[j + 2]! << 16) | (block[j + 3]! << 24);
    }
    v.set(h);
    v.set(IV, 8);
    v[12] = (v[12]! ^ this.total) >>> 0;
    v[13] = (v[13]! ^ Math.floor(this.total / 0x100000000)) >>> 0;
    if (last) v[14] = ~v[14]! >>> 0;
    for (let r = 0; r < 10; r++) {
      const s = r * 16;
      g(v, m, 0, 4, 8, 12, SIGMA[s]!, SIGMA[s + 1]!);
      g(v, m, 1, 5, 9, 13, SIGMA[s + 2]!, SIGMA[s + 3]!);
      g(v, m, 2, 6, 10, 14, SIGMA[s + 4]!, SIGMA[s + 5]!);
      g(v, m, 3, 7, 11, 15, SIGMA[s + 6]!, SIGMA[s + 7]!);
      g(v, m, 0, 5, 10, 15, SIGMA[s + 8]!, SIGMA[s + 9]!);
      g(v, m, 1, 6, 11, 12, SIGMA[s + 10]!, SIGMA[s + 11]!);
      g(v, m, 2, 7, 8, 13, SIGMA[s + 12]!, SIGMA[s + 13]!);
      g(v, m, 3, 4, 9, 14, SIGMA[s + 14]!, SIGMA[s + 15]!);
    }
    for (let i = 0; i < 8; i++) h[i] = h[i]! ^ v[i]! ^ v[i + 8]!;
  }
}

/** The mixing function G (RFC 7693 section 3.1) with rotations 16, 12, 8, 7. */
function g(v: Uint32Array, m: Uint32Array, a: number, b: number, c: number, d: number, x: number, y: number): void {
  let va = v[a]!, vb = v[b]!, vc = v[c]!, vd = v[d]!;
  va = (va + vb + m[x]!) | 0;
  vd ^= va;
  vd = (vd >>> 16) | (vd << 16);
  vc = (vc + vd) | 0;
  vb ^= vc;
  vb = (vb >>> 12) | (vb << 20);
  va = (va + vb + m[y]!) | 0;
  vd ^= va;
  vd = (vd >>> 8) | (vd << 24);
  vc = (vc + vd) | 0;
  vb ^= vc;
  vb = (vb >>> 7) | (vb << 25);
  v[a] = va;
  v[b] = vb;
  v[c] = vc;
  v[d] = vd;
}

/** BLAKE2s-256 of the concatenation of `parts`. */
export function blake2s(...parts: Uint8Array[]): Uint8Array {
  const hash = new Blake2s();
  for (const p of parts) hash.update(p);
  return hash.digest();
}
