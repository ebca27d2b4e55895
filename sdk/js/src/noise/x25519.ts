/**
 * X25519 (RFC 7748): the Montgomery ladder on Curve25519 over GF(2^255 - 19).
 *
 * A field element is sixteen 16-bit limbs in a Float64Array (little-endian, value =
 * sum limb[i] * 2^(16 i)); products of two limbs summed sixteen times stay far below 2^53, so
 * the double arithmetic is exact. Constant time: the ladder runs all 255 steps, swaps with a
 * mask (no branch on a key bit), and nothing indexes memory by a secret; the inversion is a
 * fixed chain of squarings and multiplications.
 */

export const X25519_KEY_LEN = 32;

type Fe = Float64Array;

const fe = (): Fe => new Float64Array(16);

/** Scratch space for one multiplication (31 partial sums). */
const product = new Float64Array(31);

/** Carries every limb into the next; bit 256 and above wrap to limb 0 times 38 (2^256 = 38). */
function carry(o: Fe): void {
  let c = 0;
  for (let i = 0; i < 16; i++) {
    const v = o[i]! + c;
    c = Math.floor(v / 65536);
    o[i] = v - c * 65536;
  }
  o[0]! += 38 * c;
}

function add(o: Fe, a: Fe, b: Fe): void {
  for (let i = 0; i < 16; i++) o[i] = a[i]! + b[i]!;
}

function sub(o: Fe, a: Fe, b: Fe): void {
  for (let i = 0; i < 16; i++) o[i] = a[i]! - b[i]!;
}

/** o = a * b; `o` may alias `a` or `b`. */
function mul(o: Fe, a: Fe, b: Fe): void {
  const t = product;
  t.fill(0);
  for (let i = 0; i < 16; i++) {
    const ai = a[i]!;
    for (let j = 0; j < 16; j++) t[i + j]! += ai * b[j]!;
  }
  // Limb 16 + i is worth 2^256 * 2^(16 i) = 38 * 2^(16 i).
  for (let i = 0; i < 15; i++) t[i]! += 38 * t[i + 16]!;
  for (let i = 0; i < 16; i++) o[i] = t[i]!;
  carry(o);
  carry(o);
}

function square(o: Fe, a: Fe): void {
  mul(o, a, a);
}

/** Swaps p and q when bit is 1, leaves them when 0, the same way either time. */
function cswap(p: Fe, q: Fe, bit: number): void {
  const mask = -bit; // 0 or all ones (as int32)
  for (let i = 0; i < 16; i++) {
    const t = mask & (p[i]! ^ q[i]!);
    p[i] = p[i]! ^ t;
    q[i] = q[i]! ^ t;
  }
}

/** a^(p - 2) = a^-1 (Fermat); p - 2 = 2^255 - 21: every bit set except bits 2 and 4. */
function invert(o: Fe, a: Fe): void {
  const c = fe();
  c.set(a);
  for (let bit = 253; bit >= 0; bit--) {
    square(c, c);
    if (bit !== 2 && bit !== 4) mul(c, c, a);
  }
  o.set(c);
}

/** Fully reduces a field element modulo p and writes its 32 little-endian bytes. */
function pack(out: Uint8Array, n: Fe): void {
  const t = fe();
  const m = fe();
  t.set(n);
  carry(t);
  carry(t);
  carry(t);
  // t is now below 2^256 with limbs in 0..65535; subtract p twice, keeping the result only
  // when it did not go negative (chosen by mask, not by branch).
  for (let pass = 0; pass < 2; pass++) {
    m[0] = t[0]! - 0xffed;
    for (let i = 1; i < 15; i++) {
      m[i] = t[i]! - 0xffff - ((m[i - 1]! >> 16) & 1);
      m[i - 1]! &= 0xffff;
    }
    m[15] = t[15]! - 0x7fff - ((m[14]! >> 16) & 1);
    const borrow = (m[15]! >> 16) & 1;
    m[14]! &= 0xffff;
    cswap(t, m, 1 - borrow);
  }
  for (let i = 0; i < 16; i++) {
    out[2 * i] = t[i]! & 0xff;
    out[2 * i + 1] = t[i]! >> 8;
  }
}

/** Reads a u-coordinate, ignoring the top bit (RFC 7748 section 5). */
function unpack(o: Fe, b: Uint8Array): void {
  for (let i = 0; i < 16; i++) o[i] = b[2 * i]! + (b[2 * i + 1]! << 8);
  o[15]! &= 0x7fff;
}

const A24 = (() => {
  const a = fe();
  a[0] = 0xdb41; // 121665 = 0x1db41
  a[1] = 1;
  return a;
})();

/**
 * X25519(scalar, u): the shared secret of a private key and a public key, or the public key
 * of a private one with `u` = 9. Both are 32 bytes; the scalar is clamped as RFC 7748 says.
 */
export function x25519(scalar: Uint8Array, u: Uint8Array): Uint8Array {
  if (scalar.length !== X25519_KEY_LEN || u.length !== X25519_KEY_LEN) {
    throw new RangeError("X25519 takes a 32-byte scalar and a 32-byte u-coordinate");
  }
  const k = scalar.slice();
  k[0]! &= 248;
  k[31]! &= 127;
  k[31]! |= 64;
  const x1 = fe();
  unpack(x1, u);
  const x2 = fe(), z2 = fe(), x3 = fe(), z3 = fe();
  const a = fe(), aa = fe(), b = fe(), bb = fe(), e = fe(), c = fe(), d = fe(), da = fe(), cb = fe();
  x2[0] = 1;
  x3.set(x1);
  z3[0] = 1;
  let swap = 0;
  for (let t = 254; t >= 0; t--) {
    const kt = (k[t >>> 3]! >>> (t & 7)) & 1;
    swap ^= kt;
    cswap(x2, x3, swap);
    cswap(z2, z3, swap);
    swap = kt;
    add(a, x2, z2);
    square(aa, a);
    sub(b, x2, z2);
    square(bb, b);
    sub(e, aa, bb);
    add(c, x3, z3);
    sub(d, x3, z3);
    mul(da, d, a);
    mul(cb, c, b);
    add(x3, da, cb);
    square(x3, x3);
    sub(z3, da, cb);
    square(z3, z3);
    mul(z3, z3, x1);
    mul(x2, aa, bb);
    mul(z2, A24, e);
    add(z2, z2, aa);
    mul(z2, z2, e);
  }
  cswap(x2, x3, swap);
  cswap(z2, z3, swap);
  invert(z2, z2);
  mul(x2, x2, z2);
  const out = new Uint8Array(X25519_KEY_LEN);
  pack(out, x2);
  k.fill(0);
  return out;
}

const BASE_POINT = (() => {
  const b = new Uint8Array(X25519_KEY_LEN);
  b[0] = 9;
  return b;
})();

/** The public key of a 32-byte private key. */
export function x25519PublicKey(privateKey: Uint8Array): Uint8Array {
  return x25519(privateKey, BASE_POINT);
}
