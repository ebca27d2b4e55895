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

/** o = a * b mod p, limbs carried; `o` may alias `a` or `b`. Unrolled over locals: the ladder's hot path. */
function mul(o: Fe, a: Fe, b: Fe): void {
  const a0 = a[0]!, a1 = a[1]!, a2 = a[2]!, a3 = a[3]!, a4 = a[4]!, a5 = a[5]!, a6 = a[6]!, a7 = a[7]!, a8 = a[8]!, a9 = a[9]!, a10 = a[10]!, a11 = a[11]!, a12 = a[12]!, a13 = a[13]!, a14 = a[14]!, a15 = a[15]!;
  const b0 = b[0]!, b1 = b[1]!, b2 = b[2]!, b3 = b[3]!, b4 = b[4]!, b5 = b[5]!, b6 = b[6]!, b7 = b[7]!, b8 = b[8]!, b9 = b[9]!, b10 = b[10]!, b11 = b[11]!, b12 = b[12]!, b13 = b[13]!, b14 = b[14]!, b15 = b[15]!;
  let t0 = a0 * b0;
  let t1 = a0 * b1 + a1 * b0;
  let t2 = a0 * b2 + a1 * b1 + a2 * b0;
  let t3 = a0 * b3 + a1 * b2 + a2 * b1 + a3 * b0;
  let t4 = a0 * b4 + a1 * b3 + a2 * b2 + a3 * b1 + a4 * b0;
  let t5 = a0 * b5 + a1 * b4 + a2 * b3 + a3 * b2 + a4 * b1 + a5 * b0;
  let t6 = a0 * b6 + a1 * b5 + a2 * b4 + a3 * b3 + a4 * b2 + a5 * b1 + a6 * b0;
  let t7 = a0 * b7 + a1 * b6 + a2 * b5 + a3 * b4 + a4 * b3 + a5 * b2 + a6 * b1 + a7 * b0;
  let t8 = a0 * b8 + a1 * b7 + a2 * b6 + a3 * b5 + a4 * b4 + a5 * b3 + a6 * b2 + a7 * b1 + a8 * b0;
  let t9 = a0 * b9 + a1 * b8 + a2 * b7 + a3 * b6 + a4 * b5 + a5 * b4 + a6 * b3 + a7 * b2 + a8 * b1 + a9 * b0;
  let t10 = a0 * b10 + a1 * b9 + a2 * b8 + a3 * b7 + a4 * b6 + a5 * b5 + a6 * b4 + a7 * b3 + a8 * b2 + a9 * b1 + a10 * b0;
  let t11 = a0 * b11 + a1 * b10 + a2 * b9 + a3 * b8 + a4 * b7 + a5 * b6 + a6 * b5 + a7 * b4 + a8 * b3 + a9 * b2 + a10 * b1 + a11 * b0;
  let t12 = a0 * b12 + a1 * b11 + a2 * b10 + a3 * b9 + a4 * b8 + a5 * b7 + a6 * b6 + a7 * b5 + a8 * b4 + a9 * b3 + a10 * b2 + a11 * b1 + a12 * b0;
  let t13 = a0 * b13 + a1 * b12 + a2 * b11 + a3 * b10 + a4 * b9 + a5 * b8 + a6 * b7 + a7 * b6 + a8 * b5 + a9 * b4 + a10 * b3 + a11 * b2 + a12 * b1 + a13 * b0;
  let t14 = a0 * b14 + a1 * b13 + a2 * b12 + a3 * b11 + a4 * b10 + a5 * b9 + a6 * b8 + a7 * b7 + a8 * b6 + a9 * b5 + a10 * b4 + a11 * b3 + a12 * b2 + a13 * b1 + a14 * b0;
  let t15 = a0 * b15 + a1 * b14 + a2 * b13 + a3 * b12 + a4 * b11 + a5 * b10 + a6 * b9 + a7 * b8 + a8 * b7 + a9 * b6 + a10 * b5 + a11 * b4 + a12 * b3 + a13 * b2 + a14 * b1 + a15 * b0;
  const t16 = a1 * b15 + a2 * b14 + a3 * b13 + a4 * b12 + a5 * b11 + a6 * b10 + a7 * b9 + a8 * b8 + a9 * b7 + a10 * b6 + a11 * b5 + a12 * b4 + a13 * b3 + a14 * b2 + a15 * b1;
  const t17 = a2 * b15 + a3 * b14 + a4 * b13 + a5 * b12 + a6 * b11 + a7 * b10 + a8 * b9 + a9 * b8 + a10 * b7 + a11 * b6 + a12 * b5 + a13 * b4 + a14 * b3 + a15 * b2;
  const t18 = a3 * b15 + a4 * b14 + a5 * b13 + a6 * b12 + a7 * b11 + a8 * b10 + a9 * b9 + a10 * b8 + a11 * b7 + a12 * b6 + a13 * b5 + a14 * b4 + a15 * b3;
  const t19 = a4 * b15 + a5 * b14 + a6 * b13 + a7 * b12 + a8 * b11 + a9 * b10 + a10 * b9 + a11 * b8 + a12 * b7 + a13 * b6 + a14 * b5 + a15 * b4;
  const t20 = a5 * b15 + a6 * b14 + a7 * b13 + a8 * b12 + a9 * b11 + a10 * b10 + a11 * b9 + a12 * b8 + a13 * b7 + a14 * b6 + a15 * b5;
  const t21 = a6 * b15 + a7 * b14 + a8 * b13 + a9 * b12 + a10 * b11 + a11 * b10 + a12 * b9 + a13 * b8 + a14 * b7 + a15 * b6;
  const t22 = a7 * b15 + a8 * b14 + a9 * b13 + a10 * b12 + a11 * b11 + a12 * b10 + a13 * b9 + a14 * b8 + a15 * b7;
  const t23 = a8 * b15 + a9 * b14 + a10 * b13 + a11 * b12 + a12 * b11 + a13 * b10 + a14 * b9 + a15 * b8;
  const t24 = a9 * b15 + a10 * b14 + a11 * b13 + a12 * b12 + a13 * b11 + a14 * b10 + a15 * b9;
  const t25 = a10 * b15 + a11 * b14 + a12 * b13 + a13 * b12 + a14 * b11 + a15 * b10;
  const t26 = a11 * b15 + a12 * b14 + a13 * b13 + a14 * b12 + a15 * b11;
  const t27 = a12 * b15 + a13 * b14 + a14 * b13 + a15 * b12;
  const t28 = a13 * b15 + a14 * b14 + a15 * b13;
  const t29 = a14 * b15 + a15 * b14;
  const t30 = a15 * b15;
  // Limb 16 + i is worth 2^256 * 2^(16 i) = 38 * 2^(16 i).
  t0 += 38 * t16;
  t1 += 38 * t17;
  t2 += 38 * t18;
  t3 += 38 * t19;
  t4 += 38 * t20;
  t5 += 38 * t21;
  t6 += 38 * t22;
  t7 += 38 * t23;
  t8 += 38 * t24;
  t9 += 38 * t25;
  t10 += 38 * t26;
  t11 += 38 * t27;
  t12 += 38 * t28;
  t13 += 38 * t29;
  t14 += 38 * t30;
  let c = 0;
  let v = 0;
  v = t0;
  c = Math.floor(v / 65536);
  t0 = v - c * 65536;
  v = t1 + c;
  c = Math.floor(v / 65536);
  t1 = v - c * 65536;
  v = t2 + c;
  c = Math.floor(v / 65536);
  t2 = v - c * 65536;
  v = t3 + c;
  c = Math.floor(v / 65536);
  t3 = v - c * 65536;
  v = t4 + c;
  c = Math.floor(v / 65536);
  t4 = v - c * 65536;
  v = t5 + c;
  c = Math.floor(v / 65536);
  t5 = v - c * 65536;
  v = t6 + c;
  c = Math.floor(v / 65536);
  t6 = v - c * 65536;
  v = t7 + c;
  c = Math.floor(v / 65536);
  t7 = v - c * 65536;
  v = t8 + c;
  c = Math.floor(v / 65536);
  t8 = v - c * 65536;
  v = t9 + c;
  c = Math.floor(v / 65536);
  t9 = v - c * 65536;
  v = t10 + c;
  c = Math.floor(v / 65536);
  t10 = v - c * 65536;
  v = t11 + c;
  c = Math.floor(v / 65536);
  t11 = v - c * 65536;
  v = t12 + c;
  c = Math.floor(v / 65536);
  t12 = v - c * 65536;
  v = t13 + c;
  c = Math.floor(v / 65536);
  t13 = v - c * 65536;
  v = t14 + c;
  c = Math.floor(v / 65536);
  t14 = v - c * 65536;
  v = t15 + c;
  c = Math.floor(v / 65536);
  t15 = v - c * 65536;
  t0 += 38 * c;
  c = 0;
  v = t0 + c;
  c = Math.floor(v / 65536);
  t0 = v - c * 65536;
  v = t1 + c;
  c = Math.floor(v / 65536);
  t1 = v - c * 65536;
  v = t2 + c;
  c = Math.floor(v / 65536);
  t2 = v - c * 65536;
  v = t3 + c;
  c = Math.floor(v / 65536);
  t3 = v - c * 65536;
  v = t4 + c;
  c = Math.floor(v / 65536);
  t4 = v - c * 65536;
  v = t5 + c;
  c = Math.floor(v / 65536);
  t5 = v - c * 65536;
  v = t6 + c;
  c = Math.floor(v / 65536);
  t6 = v - c * 65536;
  v = t7 + c;
  c = Math.floor(v / 65536);
  t7 = v - c * 65536;
  v = t8 + c;
  c = Math.floor(v / 65536);
  t8 = v - c * 65536;
  v = t9 + c;
  c = Math.floor(v / 65536);
  t9 = v - c * 65536;
  v = t10 + c;
  c = Math.floor(v / 65536);
  t10 = v - c * 65536;
  v = t11 + c;
  c = Math.floor(v / 65536);
  t11 = v - c * 65536;
  v = t12 + c;
  c = Math.floor(v / 65536);
  t12 = v - c * 65536;
  v = t13 + c;
  c = Math.floor(v / 65536);
  t13 = v - c * 65536;
  v = t14 + c;
  c = Math.floor(v / 65536);
  t14 = v - c * 65536;
  v = t15 + c;
  c = Math.floor(v / 65536);
  t15 = v - c * 65536;
  t0 += 38 * c;
  o[0] = t0;
  o[1] = t1;
  o[2] = t2;
  o[3] = t3;
  o[4] = t4;
  o[5] = t5;
  o[6] = t6;
  o[7] = t7;
  o[8] = t8;
  o[9] = t9;
  o[10] = t10;
  o[11] = t11;
  o[12] = t12;
  o[13] = t13;
  o[14] = t14;
  o[15] = t15;
}

/** o = a^2 mod p: the products a_i a_j (i < j) once, doubled. `o` may alias `a`. */
function square(o: Fe, a: Fe): void {
  const a0 = a[0]!, a1 = a[1]!, a2 = a[2]!, a3 = a[3]!, a4 = a[4]!, a5 = a[5]!, a6 = a[6]!, a7 = a[7]!, a8 = a[8]!, a9 = a[9]!, a10 = a[10]!, a11 = a[11]!, a12 = a[12]!, a13 = a[13]!, a14 = a[14]!, a15 = a[15]!;
  let t0 = a0 * a0;
  let t1 = 2 * (a0 * a1);
  let t2 = 2 * (a0 * a2) + a1 * a1;
  let t3 = 2 * (a0 * a3 + a1 * a2);
  let t4 = 2 * (a0 * a4 + a1 * a3) + a2 * a2;
  let t5 = 2 * (a0 * a5 + a1 * a4 + a2 * a3);
  let t6 = 2 * (a0 * a6 + a1 * a5 + a2 * a4) + a3 * a3;
  let t7 = 2 * (a0 * a7 + a1 * a6 + a2 * a5 + a3 * a4);
  let t8 = 2 * (a0 * a8 + a1 * a7 + a2 * a6 + a3 * a5) + a4 * a4;
  let t9 = 2 * (a0 * a9 + a1 * a8 + a2 * a7 + a3 * a6 + a4 * a5);
  let t10 = 2 * (a0 * a10 + a1 * a9 + a2 * a8 + a3 * a7 + a4 * a6) + a5 * a5;
  let t11 = 2 * (a0 * a11 + a1 * a10 + a2 * a9 + a3 * a8 + a4 * a7 + a5 * a6);
  let t12 = 2 * (a0 * a12 + a1 * a11 + a2 * a10 + a3 * a9 + a4 * a8 + a5 * a7) + a6 * a6;
  let t13 = 2 * (a0 * a13 + a1 * a12 + a2 * a11 + a3 * a10 + a4 * a9 + a5 * a8 + a6 * a7);
  let t14 = 2 * (a0 * a14 + a1 * a13 + a2 * a12 + a3 * a11 + a4 * a10 + a5 * a9 + a6 * a8) + a7 * a7;
  let t15 = 2 * (a0 * a15 + a1 * a14 + a2 * a13 + a3 * a12 + a4 * a11 + a5 * a10 + a6 * a9 + a7 * a8);
  const t16 = 2 * (a1 * a15 + a2 * a14 + a3 * a13 + a4 * a12 + a5 * a11 + a6 * a10 + a7 * a9) + a8 * a8;
  const t17 = 2 * (a2 * a15 + a3 * a14 + a4 * a13 + a5 * a12 + a6 * a11 + a7 * a10 + a8 * a9);
  const t18 = 2 * (a3 * a15 + a4 * a14 + a5 * a13 + a6 * a12 + a7 * a11 + a8 * a10) + a9 * a9;
  const t19 = 2 * (a4 * a15 + a5 * a14 + a6 * a13 + a7 * a12 + a8 * a11 + a9 * a10);
  const t20 = 2 * (a5 * a15 + a6 * a14 + a7 * a13 + a8 * a12 + a9 * a11) + a10 * a10;
  const t21 = 2 * (a6 * a15 + a7 * a14 + a8 * a13 + a9 * a12 + a10 * a11);
  const t22 = 2 * (a7 * a15 + a8 * a14 + a9 * a13 + a10 * a12) + a11 * a11;
  const t23 = 2 * (a8 * a15 + a9 * a14 + a10 * a13 + a11 * a12);
  const t24 = 2 * (a9 * a15 + a10 * a14 + a11 * a13) + a12 * a12;
  const t25 = 2 * (a10 * a15 + a11 * a14 + a12 * a13);
  const t26 = 2 * (a11 * a15 + a12 * a14) + a13 * a13;
  const t27 = 2 * (a12 * a15 + a13 * a14);
  const t28 = 2 * (a13 * a15) + a14 * a14;
  const t29 = 2 * (a14 * a15);
  const t30 = a15 * a15;
  // Limb 16 + i is worth 2^256 * 2^(16 i) = 38 * 2^(16 i).
  t0 += 38 * t16;
  t1 += 38 * t17;
  t2 += 38 * t18;
  t3 += 38 * t19;
  t4 += 38 * t20;
  t5 += 38 * t21;
  t6 += 38 * t22;
  t7 += 38 * t23;
  t8 += 38 * t24;
  t9 += 38 * t25;
  t10 += 38 * t26;
  t11 += 38 * t27;
  t12 += 38 * t28;
  t13 += 38 * t29;
  t14 += 38 * t30;
  let c = 0;
  let v = 0;
  v = t0;
  c = Math.floor(v / 65536);
  t0 = v - c * 65536;
  v = t1 + c;
  c = Math.floor(v / 65536);
  t1 = v - c * 65536;
  v = t2 + c;
  c = Math.floor(v / 65536);
  t2 = v - c * 65536;
  v = t3 + c;
  c = Math.floor(v / 65536);
  t3 = v - c * 65536;
  v = t4 + c;
  c = Math.floor(v / 65536);
  t4 = v - c * 65536;
  v = t5 + c;
  c = Math.floor(v / 65536);
  t5 = v - c * 65536;
  v = t6 + c;
  c = Math.floor(v / 65536);
  t6 = v - c * 65536;
  v = t7 + c;
  c = Math.floor(v / 65536);
  t7 = v - c * 65536;
  v = t8 + c;
  c = Math.floor(v / 65536);
  t8 = v - c * 65536;
  v = t9 + c;
  c = Math.floor(v / 65536);
  t9 = v - c * 65536;
  v = t10 + c;
  c = Math.floor(v / 65536);
  t10 = v - c * 65536;
  v = t11 + c;
  c = Math.floor(v / 65536);
  t11 = v - c * 65536;
  v = t12 + c;
  c = Math.floor(v / 65536);
  t12 = v - c * 65536;
  v = t13 + c;
  c = Math.floor(v / 65536);
  t13 = v - c * 65536;
  v = t14 + c;
  c = Math.floor(v / 65536);
  t14 = v - c * 65536;
  v = t15 + c;
  c = Math.floor(v / 65536);
  t15 = v - c * 65536;
  t0 += 38 * c;
  c = 0;
  v = t0 + c;
  c = Math.floor(v / 65536);
  t0 = v - c * 65536;
  v = t1 + c;
  c = Math.floor(v / 65536);
  t1 = v - c * 65536;
  v = t2 + c;
  c = Math.floor(v / 65536);
  t2 = v - c * 65536;
  v = t3 + c;
  c = Math.floor(v / 65536);
  t3 = v - c * 65536;
  v = t4 + c;
  c = Math.floor(v / 65536);
  t4 = v - c * 65536;
  v = t5 + c;
  c = Math.floor(v / 65536);
  t5 = v - c * 65536;
  v = t6 + c;
  c = Math.floor(v / 65536);
  t6 = v - c * 65536;
  v = t7 + c;
  c = Math.floor(v / 65536);
  t7 = v - c * 65536;
  v = t8 + c;
  c = Math.floor(v / 65536);
  t8 = v - c * 65536;
  v = t9 + c;
  c = Math.floor(v / 65536);
  t9 = v - c * 65536;
  v = t10 + c;
  c = Math.floor(v / 65536);
  t10 = v - c * 65536;
  v = t11 + c;
  c = Math.floor(v / 65536);
  t11 = v - c * 65536;
  v = t12 + c;
  c = Math.floor(v / 65536);
  t12 = v - c * 65536;
  v = t13 + c;
  c = Math.floor(v / 65536);
  t13 = v - c * 65536;
  v = t14 + c;
  c = Math.floor(v / 65536);
  t14 = v - c * 65536;
  v = t15 + c;
  c = Math.floor(v / 65536);
  t15 = v - c * 65536;
  t0 += 38 * c;
  o[0] = t0;
  o[1] = t1;
  o[2] = t2;
  o[3] = t3;
  o[4] = t4;
  o[5] = t5;
  o[6] = t6;
  o[7] = t7;
  o[8] = t8;
  o[9] = t9;
  o[10] = t10;
  o[11] = t11;
  o[12] = t12;
  o[13] = t13;
  o[14] = t14;
  o[15] = t15;
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

/** o = a^(2^n) (n squarings). */
function squareTimes(o: Fe, a: Fe, n: number): void {
  square(o, a);
  for (let i = 1; i < n; i++) square(o, o);
}

/**
 * o = a^(p - 2) = a^-1 (Fermat), p - 2 = 2^255 - 21, by the usual addition chain: 254
 * squarings and 11 multiplications, the same sequence for every input.
 */
function invert(o: Fe, a: Fe): void {
  const z2 = fe(), z9 = fe(), z11 = fe(), z5 = fe(), z10 = fe(), z20 = fe(), z50 = fe(), z100 = fe(), t = fe();
  square(z2, a); // a^2
  squareTimes(t, z2, 2); // a^8
  mul(z9, t, a); // a^9
  mul(z11, z9, z2); // a^11
  square(t, z11); // a^22
  mul(z5, t, z9); // a^(2^5 - 1)
  squareTimes(t, z5, 5);
  mul(z10, t, z5); // a^(2^10 - 1)
  squareTimes(t, z10, 10);
  mul(z20, t, z10); // a^(2^20 - 1)
  squareTimes(t, z20, 20);
  mul(t, t, z20); // a^(2^40 - 1)
  squareTimes(t, t, 10);
  mul(z50, t, z10); // a^(2^50 - 1)
  squareTimes(t, z50, 50);
  mul(z100, t, z50); // a^(2^100 - 1)
  squareTimes(t, z100, 100);
  mul(t, t, z100); // a^(2^200 - 1)
  squareTimes(t, t, 50);
  mul(t, t, z50); // a^(2^250 - 1)
  squareTimes(t, t, 5); // a^(2^255 - 32)
  mul(o, t, z11); // a^(2^255 - 21)
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
