/** Dedupe, backoff, ticks (ported from client/src) and the WebSocket transport. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { Backoff, DEFAULT_BACKOFF } from "../src/backoff.js";
import { encode } from "../src/codec.js";
import { Dedupe, MAX_THREADS, RECENT_PER_THREAD } from "../src/dedupe.js";
import { frame, MessageKind, ReceiptKind, Role, type Member, type Message } from "../src/frames.js";
import { FileStorage } from "../src/node.js";
import { applyReceipt, applySent, Tick, tick } from "../src/ticks.js";
import { webSocketConnector, type WebSocketLike } from "../src/transport.js";
import { mkdtempSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

test("dedupe: a second sighting is a duplicate; threads are separate", () => {
  const d = new Dedupe();
  assert.ok(d.insert(1n, 10n));
  assert.ok(!d.insert(1n, 10n));
  assert.ok(d.insert(2n, 10n), "threads are separate");
  assert.ok(d.insert(1n, 5n), "an older id not yet seen is new");
});

test("dedupe: the floor covers everything below and drops recent ids", () => {
  const d = new Dedupe();
  d.insert(1n, 10n);
  d.insert(1n, 20n);
  d.insert(1n, 30n);
  d.raiseFloor(1n, 20n);
  assert.equal(d.recentLen(), 1);
  assert.ok(!d.insert(1n, 15n));
  assert.ok(!d.insert(1n, 30n));
  assert.ok(d.insert(1n, 31n));
  d.raiseFloor(1n, 5n);
  assert.ok(d.contains(1n, 20n), "the floor never goes down");
});

test("dedupe: the threads are bounded; the one touched longest ago is forgotten", () => {
  const d = new Dedupe(3);
  assert.ok(d.insert(1n, 10n));
  assert.ok(d.insert(2n, 20n));
  assert.ok(d.insert(3n, 30n));
  assert.ok(!d.insert(1n, 10n), "touching thread 1 makes it the newest");
  assert.ok(d.insert(4n, 40n));
  assert.equal(d.threadCount, 3);
  assert.ok(!d.contains(2n, 20n), "thread 2, touched longest ago, is forgotten");
  assert.ok(d.contains(1n, 10n) && d.contains(3n, 30n) && d.contains(4n, 40n));
  d.raiseFloor(5n, 50n);
  assert.equal(d.threadCount, 3, "a floor counts as a touch, within the bound");
  assert.ok(!d.contains(3n, 30n));
  const big = new Dedupe();
  for (let t = 0n; t < BigInt(MAX_THREADS) + 100n; t++) big.insert(t, 1n);
  assert.equal(big.threadCount, MAX_THREADS);
});

test("dedupe: memory is bounded per thread", () => {
  const d = new Dedupe();
  for (let id = 1n; id <= BigInt(RECENT_PER_THREAD * 3); id++) assert.ok(d.insert(7n, id));
  assert.equal(d.recentLen(), RECENT_PER_THREAD);
  assert.ok(d.contains(7n, 1n));
  assert.ok(!d.insert(7n, 2n));
  assert.ok(d.contains(7n, BigInt(RECENT_PER_THREAD * 3)));
});

test("backoff: delays double up to the ceiling within the jitter", () => {
  let r = 0;
  const randoms = [0, 0.999, 0.5];
  const b = new Backoff(DEFAULT_BACKOFF, () => randoms[r++ % 3]!);
  for (const base of [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]) {
    const d = b.nextDelay();
    assert.ok(d >= base * 0.8 - 0.001 && d <= base * 1.2 + 0.001, `${d} vs ${base}`);
  }
  b.reset();
  assert.ok(b.nextDelay() <= 120);
  const exact = new Backoff({ ...DEFAULT_BACKOFF, jitter: 0 });
  assert.deepEqual([exact.nextDelay(), exact.nextDelay()], [100, 200]);
});

function member(user: bigint, delivered: bigint, read: bigint): Member {
  return { user, role: Role.Member, delivered, read };
}

test("ticks: a direct thread follows the peer's cursors", () => {
  const members = [member(1n, 100n, 100n), member(2n, 0n, 0n)];
  assert.equal(tick(members, 1n, 100n), Tick.Sent);
  assert.ok(applyReceipt(members, 2n, ReceiptKind.Delivered, 100n));
  assert.equal(tick(members, 1n, 100n), Tick.Delivered);
  assert.ok(applyReceipt(members, 2n, ReceiptKind.Read, 150n));
  assert.equal(tick(members, 1n, 100n), Tick.Read);
  assert.ok(!applyReceipt(members, 2n, ReceiptKind.Delivered, 120n), "stale cursor");
});

test("ticks: a reply reads what came before it; system messages do not", () => {
  const members = [member(1n, 100n, 100n), member(2n, 0n, 0n)];
  const reply: Message = { thread: 7n, id: 150n, sender: 2n, clientMsgId: 0n, kind: MessageKind.Text, recalled: false, body: new Uint8Array() };
  assert.ok(applySent(members, reply));
  assert.equal(tick(members, 1n, 100n), Tick.Read);
  assert.ok(!applySent(members, { ...reply, kind: MessageKind.System, id: 200n }));
});

test("ticks: a group needs every other member", () => {
  const members = [member(1n, 0n, 0n), member(2n, 50n, 50n), member(3n, 50n, 10n)];
  assert.equal(tick(members, 1n, 50n), Tick.Delivered);
  assert.equal(tick(members, 1n, 10n), Tick.Read);
  assert.equal(tick(members, 1n, 60n), Tick.Sent);
});

/** A stand-in for the platform WebSocket that records what the connector does with it. */
class FakeWebSocket implements WebSocketLike {
  static last: FakeWebSocket | undefined;
  binaryType = "blob";
  sent: Uint8Array[] = [];
  closed: Array<[number | undefined, string | undefined]> = [];
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  constructor(readonly url: string) {
    FakeWebSocket.last = this;
  }
  send(data: Uint8Array): void {
    this.sent.push(data);
  }
  close(code?: number, reason?: string): void {
    this.closed.push([code, reason]);
  }
}

test("websocket transport: binary messages in and out, several frames per message", () => {
  const got: string[] = [];
  const t = webSocketConnector(FakeWebSocket)("ws://x.test/", {
    onOpen: () => got.push("open"),
    onBytes: (b) => got.push(`bytes ${b.length}`),
    onClose: (why) => got.push(`close ${why}`),
  });
  const ws = FakeWebSocket.last!;
  assert.equal(ws.binaryType, "arraybuffer", "frames arrive as ArrayBuffer, not Blob");
  ws.onopen!({});
  const two = new Uint8Array([...encode(0, frame("Done", {})), ...encode(1, frame("Done", {}))]);
  ws.onmessage!({ data: two.buffer });
  t.send(two);
  assert.deepEqual(ws.sent, [two]);
  ws.onerror!({});
  ws.onclose!({ code: 1006, reason: "" });
  ws.onclose?.({ code: 1006 });
  assert.deepEqual(got, ["open", "bytes 18", "close WebSocket closed (code 1006)"]);
});

test("websocket transport: a text message closes with 1003; no WebSocket is a clear error", () => {
  const got: string[] = [];
  webSocketConnector(FakeWebSocket)("ws://x.test/", {
    onOpen: () => {},
    onBytes: () => got.push("bytes"),
    onClose: (why) => got.push(why),
  });
  const ws = FakeWebSocket.last!;
  ws.onmessage!({ data: "hello" });
  assert.deepEqual(ws.closed, [[1003, "Courier frames travel in binary messages"]]);
  assert.deepEqual(got, ["the server sent a text message; Courier speaks binary frames only"]);
  const saved = (globalThis as { WebSocket?: unknown }).WebSocket;
  (globalThis as { WebSocket?: unknown }).WebSocket = undefined;
  try {
    assert.throws(() => webSocketConnector()("ws://x.test/", { onOpen() {}, onBytes() {}, onClose() {} }), /pass a WebSocket constructor/);
  } finally {
    (globalThis as { WebSocket?: unknown }).WebSocket = saved;
  }
});

test("file storage keeps items across instances, in a file only its owner reads", () => {
  const path = join(mkdtempSync(join(tmpdir(), "courier-js-")), "sub", "session.json");
  const a = new FileStorage(path);
  assert.equal(a.getItem("k"), null);
  a.setItem("k", "v");
  a.setItem("w", "1");
  a.removeItem("w");
  const b = new FileStorage(path);
  assert.equal(b.getItem("k"), "v");
  assert.equal(b.getItem("w"), null);
  assert.equal(statSync(path).mode & 0o777, 0o600);
});
