/**
 * The Noise handshakes and records against protocol/noise-vectors.json, the bytes the Rust
 * implementation (on snow) generates: with the same fixed static and ephemeral keys, every
 * message and record is equal byte for byte, both sides end with the recorded handshake hash,
 * and the refusals (wrong pin, plaintext, bad length, unknown pattern) carry the same texts.
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { encode } from "../src/codec.js";
import { ErrorCode } from "../src/errors.js";
import { frame } from "../src/frames.js";
import { Handshake, type Established, type Pattern } from "../src/noise/handshake.js";
import { keypairFromPrivate, NoiseError, type RandomSource } from "../src/noise/keys.js";
import { MAX_RECORD_PLAINTEXT, Transport } from "../src/noise/record.js";
import { fromHex, rng, toHex } from "./helpers.js";

interface Message {
  from: "client" | "server";
  hex: string;
}
interface RecordVector extends Message {
  nonce: number;
  plaintext_hex: string;
}
interface HandshakeVector {
  client_pinned: string | null;
  handshake_hash: string;
  messages: Message[];
  pattern_byte: string;
  protocol: string;
  records: RecordVector[];
}
interface Vectors {
  prologue_hex: string;
  keys: Record<string, { private: string; public: string }>;
  xx: HandshakeVector;
  ik: HandshakeVector;
  ik_wrong_pin: { client_pinned: string; messages: Message[]; server_error: string };
  invalid: { description: string; error: string; hex: string; to: "server" }[];
}

const v = JSON.parse(
  readFileSync(new URL("../../../../protocol/noise-vectors.json", import.meta.url), "utf8"),
) as Vectors;

const key = (name: string) => keypairFromPrivate(fromHex(v.keys[name]!.private));
/** A "random" source that hands out one fixed ephemeral key, as the vectors were made. */
const fixed = (name: string): RandomSource => (out) => out.set(fromHex(v.keys[name]!.private));

function client(pattern: Pattern, pinned: string | null): Handshake {
  return Handshake.initiator({
    pattern,
    local: key("client_static"),
    pinned: pinned === null ? undefined : fromHex(pinned),
    random: fixed("client_ephemeral"),
  });
}

function server(): Handshake {
  return Handshake.responder({ local: key("server_static"), random: fixed("server_ephemeral") });
}

/** Feeds `bytes` in pieces chosen by `split`; returns what the last piece finished. */
function feed(hs: Handshake, bytes: Uint8Array, split: (n: number) => number): Established | undefined {
  let done: Established | undefined;
  for (let at = 0; at < bytes.length; ) {
    assert.equal(done, undefined, "finished before the message ended");
    const n = 1 + split(bytes.length - at);
    done = hs.read(bytes.subarray(at, at + n));
    at += n;
  }
  return done;
}

function checkHandshake(name: "xx" | "ik", pattern: Pattern, seed: number): void {
  const vec = v[name];
  assert.equal(vec.protocol, `Noise_${pattern}_25519_ChaChaPoly_BLAKE2s`);
  assert.equal(toHex(new TextEncoder().encode("courier/1")), v.prologue_hex);
  const split = rng(seed);
  const c = client(pattern, vec.client_pinned);
  const s = server();
  let cDone: Established | undefined;
  let sDone: Established | undefined;
  let toServer = c.takeOutput();
  const sent: Message[] = [];
  while (toServer !== undefined) {
    sent.push({ from: "client", hex: toHex(toServer) });
    sDone = feed(s, toServer, split);
    const toClient = s.takeOutput();
    if (toClient === undefined) break;
    sent.push({ from: "server", hex: toHex(toClient) });
    cDone = feed(c, toClient, split);
    toServer = c.takeOutput();
  }
  assert.deepEqual(sent, vec.messages, `${name}: every handshake message byte for byte`);
  assert.ok(cDone && sDone, "both sides finished");
  assert.equal(toHex(cDone.handshakeHash), vec.handshake_hash);
  assert.equal(toHex(sDone.handshakeHash), vec.handshake_hash);
  assert.equal(toHex(cDone.remoteStatic), v.keys.server_static!.public, "the client learned the server's key");
  assert.equal(toHex(sDone.remoteStatic), v.keys.client_static!.public);
  assert.equal(cDone.pattern, pattern);
  assert.equal(sDone.pattern, pattern);

  for (const rec of vec.records) {
    const clientSide: Transport = cDone.transport;
    const serverSide: Transport = sDone.transport;
    const [sender, receiver] = rec.from === "client" ? [clientSide, serverSide] : [serverSide, clientSide];
    assert.equal(sender.counters.sent, rec.nonce);
    const wire = sender.seal(fromHex(rec.plaintext_hex));
    assert.equal(toHex(wire), rec.hex, `${name}: record ${rec.nonce} from the ${rec.from}`);
    // Opened byte by byte: nothing comes out until the record is whole.
    const opened: Uint8Array[] = [];
    for (let i = 0; i < wire.length; i++) {
      const out = receiver.open(wire.subarray(i, i + 1));
      if (i < wire.length - 1) assert.equal(out.length, 0);
      opened.push(...out);
    }
    assert.deepEqual(opened.map(toHex), [rec.plaintext_hex]);
  }
}

test("XX: the handshake and records match noise-vectors.json byte for byte (split anywhere)", () => {
  for (let seed = 1; seed <= 5; seed++) checkHandshake("xx", "XX", seed);
});

test("IK: the handshake and records match noise-vectors.json byte for byte (split anywhere)", () => {
  for (let seed = 1; seed <= 5; seed++) checkHandshake("ik", "IK", seed);
});

test("the first record in the same chunk as the last handshake message is kept for the transport", () => {
  const vec = v.ik;
  const c = client("IK", vec.client_pinned);
  assert.equal(toHex(c.takeOutput()!), vec.messages[0]!.hex);
  const welcome = vec.records[1]!;
  const done = c.read(fromHex(vec.messages[1]!.hex + welcome.hex));
  assert.ok(done);
  assert.equal(toHex(done.rest), welcome.hex);
  assert.deepEqual(done.transport.open(done.rest).map(toHex), [welcome.plaintext_hex]);
});

test("IK with the wrong key pinned: the server answers REJECT with the Rust text, the client reports the mismatch", () => {
  const vec = v.ik_wrong_pin;
  const c = client("IK", vec.client_pinned);
  const msg1 = c.takeOutput()!;
  assert.equal(toHex(msg1), vec.messages[0]!.hex);
  const s = server();
  assert.throws(() => s.read(msg1), (e: unknown) => e instanceof NoiseError && e.message === vec.server_error);
  const reject = s.takeOutput()!;
  assert.equal(toHex(reject), vec.messages[1]!.hex);
  assert.throws(
    () => c.read(reject),
    (e: unknown) =>
      e instanceof NoiseError &&
      e.detail.kind === "ServerKeyMismatch" &&
      e.detail.presented === undefined &&
      e.detail.pinned === vec.client_pinned &&
      /do not connect/.test(e.message) &&
      /courier keys show/.test(e.message),
  );
});

test("XX with a pin the server does not hold: refused before message 3, showing both keys", () => {
  const other = v.keys.other_static!.public;
  const c = client("XX", other);
  const s = server();
  s.read(c.takeOutput()!);
  assert.throws(
    () => c.read(s.takeOutput()!),
    (e: unknown) =>
      e instanceof NoiseError &&
      e.detail.kind === "ServerKeyMismatch" &&
      e.detail.presented === v.keys.server_static!.public &&
      e.message.includes(other) &&
      e.message.includes(v.keys.server_static!.public),
  );
  assert.equal(c.takeOutput(), undefined, "the client's static key is never sent to the impostor");
});

test("openings the server must refuse carry the Rust texts", () => {
  for (const bad of v.invalid) {
    const s = server();
    assert.throws(() => s.read(fromHex(bad.hex)), (e: unknown) => e instanceof NoiseError && e.message === bad.error, bad.description);
  }
});

test("a plaintext answer to the handshake is reported with what to do, once it is whole", () => {
  const reply = encode(0, frame("ErrorReply", { code: ErrorCode.FrameTooLarge, message: "frame of 33619968 bytes exceeds the limit" }));
  const c = client("XX", null);
  c.takeOutput();
  assert.equal(c.read(reply.subarray(0, 5)), undefined, "waits for the whole frame");
  assert.throws(
    () => c.read(reply.subarray(5)),
    (e: unknown) =>
      e instanceof NoiseError &&
      e.detail.kind === "PlaintextAnswer" &&
      e.detail.code === ErrorCode.FrameTooLarge &&
      /--insecure-plaintext/.test(e.message) &&
      /insecurePlaintext: true/.test(e.message),
  );
  const full = encode(0, frame("ErrorReply", { code: ErrorCode.ServerFull, message: "the server is full; retry later" }));
  const c2 = client("IK", v.keys.server_static!.public);
  c2.takeOutput();
  assert.throws(() => c2.read(full), (e: unknown) => e instanceof NoiseError && /code 11: the server is full/.test(e.message));
});

test("a handshake message over 256 bytes is refused from its prefix", () => {
  const c = client("XX", null);
  c.takeOutput();
  assert.throws(() => c.read(fromHex("0101")), (e: unknown) => e instanceof NoiseError && e.detail.kind === "HandshakeMsgLen");
});

test("an altered handshake message fails", () => {
  const c = client("XX", null);
  const s = server();
  s.read(c.takeOutput()!);
  const msg2 = s.takeOutput()!;
  msg2[40]! ^= 1;
  assert.throws(() => c.read(msg2), (e: unknown) => e instanceof NoiseError && e.detail.kind === "Handshake");
});

function pair(): [Transport, Transport] {
  const k1 = new Uint8Array(32).fill(1);
  const k2 = new Uint8Array(32).fill(2);
  return [new Transport(k1, k2), new Transport(k2, k1)];
}

test("records: altered, replayed, reordered or reflected records fail authentication", () => {
  const [a, b] = pair();
  const r0 = a.seal(new Uint8Array([1, 2, 3]));
  const r1 = a.seal(new Uint8Array([4, 5, 6]));
  const altered = r0.slice();
  altered[3]! ^= 0x80;
  assert.throws(() => pair()[1].open(altered), /failed authentication/);
  const [a2, b2] = pair();
  a2.seal(new Uint8Array([1]));
  assert.throws(() => b2.open(a2.seal(new Uint8Array([2]))), /failed authentication/, "a dropped record: nonce out of step");
  assert.throws(() => pair()[1].open(r1), /failed authentication/, "reordered");
  assert.throws(() => pair()[0].open(r0), /failed authentication/, "reflected back to its sender");
  assert.deepEqual(b.open(r0), [new Uint8Array([1, 2, 3])]);
  assert.throws(() => b.open(r0), /failed authentication/, "replayed");
});

test("records: a length over the limit or under the tag is refused from the prefix alone", () => {
  const [, b] = pair();
  assert.throws(() => b.open(fromHex("4001"), 16384), (e: unknown) => e instanceof NoiseError && e.detail.kind === "RecordTooLarge");
  assert.throws(() => pair()[1].open(fromHex("000f")), (e: unknown) => e instanceof NoiseError && e.detail.kind === "RecordTooShort");
});

test("records: long plaintext is split at 65519 bytes; an empty record is valid", () => {
  const [a, b] = pair();
  const big = Uint8Array.from({ length: MAX_RECORD_PLAINTEXT + 100 }, (_, i) => i & 0xff);
  const wire = a.seal(big);
  assert.equal(wire.length, big.length + 2 * 18);
  assert.equal((wire[0]! << 8) | wire[1]!, 0xffff);
  const parts = b.open(wire);
  assert.deepEqual(parts.map((p) => p.length), [MAX_RECORD_PLAINTEXT, 100]);
  assert.deepEqual(Uint8Array.from([...parts[0]!, ...parts[1]!]), big);
  const empty = a.seal(new Uint8Array(0));
  assert.equal(toHex(empty.subarray(0, 2)), "0010");
  assert.deepEqual(b.open(empty), [new Uint8Array(0)]);
});
