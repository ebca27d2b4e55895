/**
 * HMAC-BLAKE2s (RFC 2104 over BLAKE2s-256, block 64 bytes) and HKDF as the Noise specification
 * defines it (section 4.3, `HKDF(chaining_key, input_key_material, num_outputs)`): two 32-byte
 * outputs (the patterns here need no third), no `info`, each output chained into the next.
 */

import { Blake2s, BLAKE2S_BLOCK_LEN, BLAKE2S_OUT_LEN } from "./blake2s.js";

const IPAD = 0x36;
const OPAD = 0x5c;

/** HMAC-BLAKE2s(key, concatenation of `parts`). Keys over 64 bytes are hashed first. */
export function hmacBlake2s(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  const k = new Uint8Array(BLAKE2S_BLOCK_LEN);
  k.set(key.length > BLAKE2S_BLOCK_LEN ? new Blake2s().update(key).digest() : key);
  const pad = new Uint8Array(BLAKE2S_BLOCK_LEN);
  for (let i = 0; i < BLAKE2S_BLOCK_LEN; i++) pad[i] = k[i]! ^ IPAD;
  const inner = new Blake2s().update(pad);
  for (const p of parts) inner.update(p);
  const innerDigest = inner.digest();
  for (let i = 0; i < BLAKE2S_BLOCK_LEN; i++) pad[i] = k[i]! ^ OPAD;
  const out = new Blake2s().update(pad).update(innerDigest).digest();
  k.fill(0);
  pad.fill(0);
  return out;
}

const ONE = new Uint8Array([1]);
const TWO = new Uint8Array([2]);

/** Noise's HKDF with two outputs (MixKey, Split). */
export function hkdf2(chainingKey: Uint8Array, ikm: Uint8Array): [Uint8Array, Uint8Array] {
  const temp = hmacBlake2s(chainingKey, ikm);
  const out1 = hmacBlake2s(temp, ONE);
  const out2 = hmacBlake2s(temp, out1, TWO);
  temp.fill(0);
  return [out1, out2];
}

export const HASH_LEN = BLAKE2S_OUT_LEN;
