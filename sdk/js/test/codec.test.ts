/** The codec beyond the vectors: splits, limits, ranges, bigint ids, appended fields. */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { Decoder, encode, MAX_FRAME_LEN, peekLen } from "../src/codec.js";
import {
  closesConnection,
  DecodeError,
  EncodeError,
  ErrorCode,
  errorCodeName,
  retryAfterSecs,
} from "../src/errors.js";
import {
  decodeSystemEvent,
  frame,
  MessageKind,
  SystemEventCodec,
  SystemEventKind,
  type Frame,
} from "../src/frames.js";
import { str, utf8Truncated, Writer } from "../src/wire.js";
import { rng } from "./helpers.js";

const U64_MAX = (1n << 64n) - 1n;

function frames(): Array<[number, Frame]> {
  return [
    [1, frame("Welcome", { version: 1, maxFrame: 65536, heartbeatSecs: 30, node: "n1" })],
    [
      0,
      frame("MessagePush", {
        message: {
          thread: 1n << 63n,
          id: U64_MAX,
          sender: 17n,
          clientMsgId: 901n,
          kind: MessageKind.Text,
          recalled: false,
          body: new TextEncoder().encode("héllo 🧗"),
        },
        replyTo: (1n << 63n) + 1n,
      }),
    ],
    [7, frame("Done", {})],
    [8, frame("ErrorReply", { code: 41, message: "not a member" })],
  ];
}

test("frames in any split decode to the same envelopes; u64 ids above 2^53 survive", () => {
  const parts = frames().map(([id, f]) => encode(id, f));
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  const expected = frames().map(([requestId, f]) => ({ requestId, frame: f }));
  for (let seed = 0; seed < 200; seed++) {
    const next = rng(seed);
    const d = new Decoder();
    const got = [];
    let rest = all;
    while (rest.length > 0) {
      const n = 1 + next(Math.min(rest.length, 40));
      d.push(rest.subarray(0, n));
      rest = rest.subarray(n);
      for (let env = d.next(); env !== undefined; env = d.next()) got.push(env);
    }
    assert.deepEqual(got, expected, `seed ${seed}`);
    assert.equal(d.buffered, 0);
  }
});

test("a decoded body is a copy: later input does not change it", () => {
  const raw = encode(0, frames()[1]![1]);
  const d = new Decoder();
  d.push(raw);
  const env = d.next()!;
  d.push(raw.map(() => 0xee));
  assert.deepEqual(env.frame, frames()[1]![1]);
});

test("the length prefix is checked before the body arrives; the limit is clamped to 1 MiB", () => {
  const d = new Decoder(1000);
  d.push(Uint8Array.of(0, 0, 0x03, 0xe9)); // len 1001: four bytes are enough to refuse it
  assert.throws(() => d.next(), /frame length 1001 exceeds the limit of 1000 bytes/);
  assert.equal(new Decoder(1 << 30).maxFrameLen, MAX_FRAME_LEN);
  assert.equal(peekLen(Uint8Array.of(0, 0, 0), 10), undefined, "prefix incomplete");
  assert.equal(peekLen(Uint8Array.of(0, 0, 0, 5), 10), 5);
  const ok = new Decoder(1000);
  ok.push(Uint8Array.of(0, 0, 0x03, 0xe8, 0x80));
  assert.equal(ok.next(), undefined, "len 1000 is allowed, the body is still coming");
});

test("values out of their field's range are refused when encoding, naming the field", () => {
  assert.throws(() => encode(1, frame("Ping", { nonce: U64_MAX + 1n })), (e: unknown) => {
    assert.ok(e instanceof EncodeError);
    assert.match((e as Error).message, /Ping\.nonce/);
    return true;
  });
  assert.throws(() => encode(1, frame("Ping", { nonce: -1n })), EncodeError);
  assert.throws(() => encode(1, frame("Ping", { nonce: 5 as unknown as bigint })), EncodeError);
  assert.throws(() => encode(1, frame("ListThreads", { beforeMsgId: 0n, beforeThread: 0n, limit: 70000 })), /ListThreads\.limit/);
  assert.throws(() => encode(1, frame("Send", { thread: 1n, clientMsgId: 1n, kind: 9 as MessageKind, body: new Uint8Array(), replyTo: 0n })), /Send\.kind/);
});

test("a string over 65,535 bytes is cut at a character boundary, never mid-character", () => {
  const s = "é".repeat(40_000); // 80,000 bytes; byte 65,535 is mid-character
  const cut = utf8Truncated(s, 0xffff);
  assert.equal(cut.length, 65_534);
  const w = new Writer();
  str.put(w, s, "f");
  assert.equal(w.length, 2 + 65_534);
});

test("a system event body decodes with or without the appended users, body and reactions", () => {
  const w = new Writer();
  const none = { body: new Uint8Array(0), reactions: [] };
  const ev = { event: SystemEventKind.MemberAdded, actor: 7n, subject: 9n, text: "", users: [9n, 11n], ...none };
  SystemEventCodec.put(w, ev, "body");
  const full = w.toBytes();
  assert.deepEqual(decodeSystemEvent(full), ev);
  const old = full.subarray(0, 1 + 8 + 8 + 2);
  assert.deepEqual(decodeSystemEvent(old), { ...ev, users: [] });
  // users (2 + 16 bytes) but no body nor reactions: a server before edits wrote this.
  assert.deepEqual(decodeSystemEvent(full.subarray(0, 1 + 8 + 8 + 2 + 18)), ev);
  assert.throws(() => decodeSystemEvent(full.subarray(0, 5)), DecodeError);
});

test("EDITED and REACTED system events carry the new body and the counts", () => {
  const edited = {
    event: SystemEventKind.Edited,
    actor: 17n,
    subject: 1700000000000001n,
    text: "",
    users: [],
    body: new TextEncoder().encode("hi!"),
    reactions: [],
  };
  const reacted = {
    event: SystemEventKind.Reacted,
    actor: 42n,
    subject: 1700000000000001n,
    text: "👍",
    users: [],
    body: new Uint8Array(0),
    reactions: [{ reaction: "👍", count: 2 }],
  };
  for (const ev of [edited, reacted]) {
    const w = new Writer();
    SystemEventCodec.put(w, ev, "body");
    assert.deepEqual(decodeSystemEvent(w.toBytes()), ev);
  }
  // The bodies of the EDITED and REACTED pushes in protocol/vectors.json, as the server wrote them.
  const fromRust = (hex: string) => decodeSystemEvent(Uint8Array.from(Buffer.from(hex, "hex")));
  const e = fromRust("0700000000000000110006 0a24181e4001 0000 0000 00000003 686921 0000".replace(/ /g, ""));
  assert.equal(e.event, SystemEventKind.Edited);
  assert.equal(new TextDecoder().decode(e.body), "hi!");
  const r = fromRust(
    "08000000000000002a00060a24181e4001 0004f09f918d 0000 00000000 0001 0004f09f918d 00000002".replace(/ /g, ""),
  );
  assert.deepEqual([r.event, r.text, r.reactions], [SystemEventKind.Reacted, "👍", [{ reaction: "👍", count: 2 }]]);
});

test("the retry hint is read from the end of an error message, as the Rust crate reads it", () => {
  assert.equal(retryAfterSecs("too many failed logins; wait, then retry [retry_after_secs=42]"), 42);
  assert.equal(retryAfterSecs("busy [retry_after_secs=1]  "), 1);
  assert.equal(retryAfterSecs("no hint here"), undefined);
  assert.equal(retryAfterSecs("[retry_after_secs=7] in the middle"), undefined);
  assert.equal(retryAfterSecs("[retry_after_secs=x]"), undefined);
  assert.equal(retryAfterSecs("[retry_after_secs=4294967296]"), undefined, "past u32");
});

test("the error table knows every code of PROTOCOL.md section 8, and which close", () => {
  assert.equal(ErrorCode.EncryptionRequired, 15);
  assert.ok(closesConnection(ErrorCode.EncryptionRequired));
  assert.ok(closesConnection(ErrorCode.WrongNode));
  assert.ok(!closesConnection(ErrorCode.Unavailable));
  assert.ok(!closesConnection(ErrorCode.LoginThrottled));
  const doc = readFileSync(new URL("../../../../protocol/PROTOCOL.md", import.meta.url), "utf8");
  const rows = [...doc.matchAll(/^\|\s+(\d+) \| `([A-Z_]+)`\s+\| (yes|no)\s+\|/gm)];
  assert.ok(rows.length > 40, "section 8 rows found");
  for (const [, code, name, closes] of rows) {
    const camel = name!.toLowerCase().replace(/(^|_)([a-z])/g, (_, __, c: string) => c.toUpperCase());
    assert.equal(errorCodeName(Number(code)), camel, `code ${code}`);
    assert.equal(closesConnection(Number(code)), closes === "yes", `${name} closes: ${closes}`);
  }
});

test("mutated and cut vectors decode or throw DecodeError, never anything else", async () => {
  const { readFileSync } = await import("node:fs");
  const vectors = JSON.parse(
    readFileSync(new URL("../../../../protocol/vectors.json", import.meta.url), "utf8"),
  ) as { frames: Array<{ hex: string }> };
  const seeds = vectors.frames.map((v) => Uint8Array.from(v.hex.match(/../g)!.map((h) => parseInt(h, 16))));
  let decoded = 0;
  let refused = 0;
  for (let seed = 0; seed < 3000; seed++) {
    const next = rng(seed);
    const base = seeds[next(seeds.length)]!.slice();
    // Flip, overwrite or cut a few bytes, body and header alike.
    for (let k = 1 + next(4); k > 0; k--) base[next(base.length)] = next(256);
    const input = next(4) === 0 ? base.subarray(0, next(base.length + 1)) : base;
    const d = new Decoder(4096);
    d.push(input);
    try {
      for (let env = d.next(); env !== undefined; env = d.next()) decoded++;
    } catch (e) {
      assert.ok(e instanceof DecodeError, `seed ${seed}: ${String(e)}`);
      refused++;
    }
  }
  assert.ok(decoded > 100 && refused > 100, `${decoded} decoded, ${refused} refused`);
});
