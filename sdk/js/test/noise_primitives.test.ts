/**
 * The Noise layer's primitives against their RFCs' test vectors: X25519 (RFC 7748 sections
 * 5.2 and 6.1), ChaCha20, Poly1305 and the AEAD (RFC 8439 sections 2.4.2, 2.5.2, 2.8.2 and
 * appendix A.3's edge cases), BLAKE2s (RFC 7693 appendix B and the appendix E self-test), and
 * HMAC-BLAKE2s / Noise's HKDF against values from Python's hmac + hashlib.blake2s.
 */

import assert from "node:assert/strict";
import { test } from "node:test";

import { Blake2s, blake2s } from "../src/noise/blake2s.js";
import { ChaCha20, ChaChaPoly, Poly1305, poly1305 } from "../src/noise/chachapoly.js";
import { hkdf2, hmacBlake2s } from "../src/noise/hkdf.js";
import { x25519, x25519PublicKey } from "../src/noise/x25519.js";
import { fromHex, rng, toHex } from "./helpers.js";

const ascii = (s: string) => new TextEncoder().encode(s);

test("X25519: RFC 7748 section 5.2 vectors", () => {
  assert.equal(
    toHex(
      x25519(
        fromHex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
        fromHex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"),
      ),
    ),
    "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
  );
  assert.equal(
    toHex(
      x25519(
        fromHex("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d"),
        fromHex("e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493"),
      ),
    ),
    "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
  );
});

test("X25519: RFC 7748 section 5.2 iterated, 1 and 1000 times", () => {
  let k: Uint8Array = fromHex("0900000000000000000000000000000000000000000000000000000000000000");
  let u: Uint8Array = k.slice();
  const after: Record<number, string> = {};
  for (let i = 1; i <= 1000; i++) {
    const r = x25519(k, u);
    u = k;
    k = r;
    if (i === 1 || i === 1000) after[i] = toHex(k);
  }
  assert.equal(after[1], "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079");
  assert.equal(after[1000], "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51");
});

test("X25519: RFC 7748 section 6.1 Diffie-Hellman", () => {
  const alice = fromHex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
  const bob = fromHex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
  assert.equal(toHex(x25519PublicKey(alice)), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  assert.equal(toHex(x25519PublicKey(bob)), "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
  const shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
  assert.equal(toHex(x25519(alice, x25519PublicKey(bob))), shared);
  assert.equal(toHex(x25519(bob, x25519PublicKey(alice))), shared);
});

const SUNSCREEN = ascii(
  "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.",
);

test("ChaCha20: RFC 8439 section 2.4.2 encryption", () => {
  const key = Uint8Array.from({ length: 32 }, (_, i) => i);
  const c = new ChaCha20(key);
  c.setNonce(fromHex("000000000000004a00000000"));
  const out = new Uint8Array(SUNSCREEN.length);
  c.xor(1, SUNSCREEN, out);
  assert.equal(
    toHex(out),
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0bf91b65c5524733ab8f593dabcd62b357" +
      "1639d624e65152ab8f530c359f0861d807ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736" +
      "5af90bbf74a35be6b40b8eedf2785e42874d",
  );
});

test("Poly1305: RFC 8439 section 2.5.2, whole and fed in pieces", () => {
  const key = fromHex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b");
  const msg = ascii("Cryptographic Forum Research Group");
  assert.equal(toHex(poly1305(key, msg)), "a8061dc1305136c6c22b8baf0c0127a9");
  const split = rng(7);
  for (let round = 0; round < 20; round++) {
    const p = new Poly1305(key);
    let at = 0;
    while (at < msg.length) {
      const n = 1 + split(msg.length - at);
      p.update(msg.subarray(at, at + n));
      at += n;
    }
    const tag = new Uint8Array(16);
    p.finish(tag);
    assert.equal(toHex(tag), "a8061dc1305136c6c22b8baf0c0127a9");
  }
});

test("Poly1305: RFC 8439 appendix A.3 edge cases of the final reduction", () => {
  const r1 = "01" + "00".repeat(15);
  const r2 = "02" + "00".repeat(15);
  const s0 = "00".repeat(16);
  const cases: [string, string, string][] = [
    // h reaches 2^130 - 5 exactly, and just above it.
    [r2 + s0, "ff".repeat(16), "03" + "00".repeat(15)],
    [r2 + "ff".repeat(16), "02" + "00".repeat(15), "03" + "00".repeat(15)],
    [r1 + s0, "ff".repeat(16) + "f0" + "ff".repeat(15) + "11" + "00".repeat(15), "05" + "00".repeat(15)],
    [r1 + s0, "ff".repeat(16) + "fb" + "fe".repeat(15) + "01".repeat(16), "00".repeat(16)],
    [r2 + s0, "fd" + "ff".repeat(15), "fa" + "ff".repeat(15)],
  ];
  for (const [key, msg, tag] of cases) {
    assert.equal(toHex(poly1305(fromHex(key), fromHex(msg))), tag, `key ${key} msg ${msg}`);
  }
});

test("ChaCha20-Poly1305: RFC 8439 section 2.8.2 AEAD; a flipped bit fails to open", () => {
  const key = Uint8Array.from({ length: 32 }, (_, i) => 0x80 + i);
  const nonce = fromHex("070000004041424344454647");
  const aad = fromHex("50515253c0c1c2c3c4c5c6c7");
  const aead = new ChaChaPoly(key);
  const sealed = aead.seal(nonce, aad, SUNSCREEN);
  const ct = sealed.subarray(0, SUNSCREEN.length);
  assert.equal(
    toHex(ct),
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b" +
      "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc" +
      "3ff4def08e4b7a9de576d26586cec64b6116",
  );
  assert.equal(toHex(sealed.subarray(SUNSCREEN.length)), "1ae10b594f09e26a7e902ecbd0600691");
  assert.deepEqual(aead.open(nonce, aad, sealed), SUNSCREEN);
  for (const at of [0, 57, sealed.length - 1]) {
    const bad = sealed.slice();
    bad[at]! ^= 1;
    assert.equal(aead.open(nonce, aad, bad), undefined, `bit flipped at ${at}`);
  }
  assert.equal(aead.open(nonce, fromHex("50515253c0c1c2c3c4c5c6c8"), sealed), undefined, "other AD");
  assert.equal(aead.open(fromHex("070000004041424344454648"), aad, sealed), undefined, "other nonce");
  assert.equal(aead.open(nonce, aad, sealed.subarray(0, 15)), undefined, "shorter than a tag");
});

test("BLAKE2s: RFC 7693 appendix B (\"abc\"), split anywhere", () => {
  const want = "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982";
  assert.equal(toHex(blake2s(ascii("abc"))), want);
  assert.equal(toHex(blake2s(ascii("a"), ascii(""), ascii("bc"))), want);
});

/** RFC 7693 appendix E: the grand hash of unkeyed and keyed digests of many lengths. */
test("BLAKE2s: RFC 7693 appendix E self-test", () => {
  const selfTestSeq = (len: number, seed: number) => {
    const out = new Uint8Array(len);
    let a = (0xdead4bad * seed) >>> 0;
    let b = 1;
    for (let i = 0; i < len; i++) {
      const t = (a + b) >>> 0;
      a = b;
      b = t;
      out[i] = t >>> 24;
    }
    return out;
  };
  const grand = new Blake2s(32);
  for (const outLen of [16, 20, 28, 32]) {
    for (const inLen of [0, 3, 64, 65, 255, 1024]) {
      const input = selfTestSeq(inLen, inLen);
      grand.update(new Blake2s(outLen).update(input).digest());
      const key = selfTestSeq(outLen, outLen);
      grand.update(new Blake2s(outLen, key).update(input).digest());
    }
  }
  assert.equal(toHex(grand.digest()), "6a411f08ce25adcdfb02aba641451cec53c598b24f4fc787fbdc88797f4c1dfe");
});

test("HMAC-BLAKE2s and Noise's HKDF match Python's hmac + hashlib.blake2s", () => {
  // python3: hmac.new(b"key", b"The quick brown fox jumps over the lazy dog", hashlib.blake2s)
  assert.equal(
    toHex(hmacBlake2s(ascii("key"), ascii("The quick brown fox jumps over the lazy dog"))),
    HMAC_FOX,
  );
  // A key longer than the 64-byte block is hashed first.
  assert.equal(toHex(hmacBlake2s(new Uint8Array(100).fill(0xaa), ascii("data"))), HMAC_LONG_KEY);
  const [k1, k2] = hkdf2(new Uint8Array(32).fill(1), new Uint8Array(32).fill(2));
  assert.equal(toHex(k1), HKDF_OUT1);
  assert.equal(toHex(k2), HKDF_OUT2);
});

const HMAC_FOX = "f93215bb90d4af4c3061cd932fb169fb8bb8a91d0b4022baea1271e1323cd9a0";
const HMAC_LONG_KEY = "e5ef37ed9204f4a5d0bb1c1d9b1d72c9ff61eb6ad7f78ce8d54798b2d8107c46";
const HKDF_OUT1 = "c8c75956ae9b80acfdac57e2af04ec8d2838a717265ab884ae5b9e8324d9c933";
const HKDF_OUT2 = "3a9b598108c64c52db0397e7591c9b6b34409fbebbc90f0afa8f79a6148e9c95";
