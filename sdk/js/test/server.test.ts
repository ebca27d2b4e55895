/**
 * The client against the real Rust server, over TCP (the server's WebSocket listener does not
 * exist yet; the bytes are the same). Needs the server binary: `COURIER_BIN=path/to/courier`
 * (`make test-js` sets it when the binary is built); skipped, and says so, without it.
 */

import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";

import { Client, type ClientConfig, type ClientEvents } from "../src/client.js";
import { ClientError } from "../src/client_error.js";
import { ErrorCode } from "../src/errors.js";
import { decodeSystemEvent, Direction, MessageKind, ReceiptKind, SystemEventKind, ThreadKind } from "../src/frames.js";
import { tcpConnector } from "../src/node.js";
import { MemoryStorage } from "../src/storage.js";
import type { Connector } from "../src/transport.js";

const BIN = process.env.COURIER_BIN;
const skip = BIN === undefined || !existsSync(BIN) ? "COURIER_BIN is not set to a built courier binary (make test-js sets it)" : false;

let server: ChildProcess | undefined;
let dataDir = "";
let addr = "";

before(async () => {
  if (skip) return;
  dataDir = mkdtempSync(join(tmpdir(), "courier-js-it-"));
  const args = ["serve", "--listen", "127.0.0.1:0", "--shards", "2", "--argon2-m-kib", "64", "--data-dir", dataDir];
  // Plaintext needs saying once the Noise transport is served; older servers lack the flag.
  const help = spawnSync(BIN!, ["serve", "--help"], { encoding: "utf8" }).stdout;
  if (help.includes("--insecure-plaintext")) args.push("--insecure-plaintext");
  server = spawn(BIN!, args, { stdio: ["ignore", "pipe", "ignore"] });
  addr = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("courier did not print its listening line within 20 s")), 20_000);
    createInterface({ input: server!.stdout! }).on("line", (line) => {
      const m = /^courier listening on (\S+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    server!.on("exit", (code) => reject(new Error(`courier exited with ${code} before listening`)));
  });
});

after(() => {
  server?.kill("SIGTERM");
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

function connect(extra: ClientConfig = {}): Promise<Client> {
  // This server runs --insecure-plaintext; noise_server.test.ts covers the encrypted default.
  return Client.connect(`tcp://${addr}`, { connector: tcpConnector(), insecurePlaintext: true, storage: new MemoryStorage(), ...extra });
}

/** Resolves with the next event of that name, or rejects after `ms`. */
function next<K extends keyof ClientEvents>(client: Client, name: K, ms = 5000, pred: (v: ClientEvents[K]) => boolean = () => true): Promise<ClientEvents[K]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${String(name)} event within ${ms} ms`));
    }, ms);
    const off = client.on(name, (v) => {
      if (!pred(v)) return;
      clearTimeout(timer);
      off();
      resolve(v);
    });
  });
}

const utf8 = (b: Uint8Array) => new TextDecoder().decode(b);
let seq = 0;
const handle = (p: string) => `${p}${process.pid % 10000}x${seq++}`;

test("two clients chat through the real server: send, push, receipts, typing, history", { skip }, async () => {
  const alice = await connect();
  const bob = await connect();
  const a = await alice.register(handle("alice"), "password1");
  const b = await bob.register(handle("bob"), "password1");
  assert.equal(alice.welcome.version, 1);
  const found = await alice.lookupUser(b.handle);
  assert.equal(found.id, b.user);
  const thread = await alice.openDirect(b.user);
  assert.equal(thread.kind, ThreadKind.Direct);

  const pushed = next(bob, "message");
  const sent = await alice.sendText(thread.id, "hello from TypeScript 👋");
  const m = await pushed;
  assert.equal(m.id, sent.message);
  assert.equal(m.sender, a.user);
  assert.equal(m.clientMsgId, sent.clientMsgId);
  assert.equal(utf8(m.body), "hello from TypeScript 👋");
  assert.equal(typeof m.id, "bigint");

  const typing = next(alice, "typing");
  bob.typing(thread.id, true);
  assert.deepEqual(await typing, { thread: thread.id, user: b.user, active: true });

  const receipt = next(alice, "receipt", 5000, (r) => r.kind === ReceiptKind.Read);
  await bob.receipt(thread.id, ReceiptKind.Read, m.id);
  assert.deepEqual(await receipt, { thread: thread.id, user: b.user, kind: ReceiptKind.Read, upTo: m.id });

  const again = await alice.sendWithId(thread.id, sent.clientMsgId, MessageKind.Text, "retried");
  assert.equal(again.message, sent.message, "the same client id is stored once");
  const history = await bob.history(thread.id, 0n, Direction.Backward, 10);
  assert.deepEqual(history.messages.map((x) => utf8(x.body)), ["hello from TypeScript 👋"]);
  const readers = await alice.readers(thread.id, m.id);
  assert.ok(readers.read.includes(b.user));
  const threads = await bob.listAllThreads();
  assert.equal(threads[0]!.id, thread.id);
  alice.close();
  bob.close();
});

test("groups, contacts, presence, media and errors against the real server", { skip }, async () => {
  const alice = await connect();
  const bob = await connect();
  const carol = await connect();
  const a = await alice.register(handle("alice"), "password1");
  const b = await bob.register(handle("bob"), "password1");
  const c = await carol.register(handle("carol"), "password1");

  const group = await alice.createGroup("climbing", [b.user]);
  const added = next(bob, "message", 5000, (m) => m.kind === MessageKind.System && decodeSystemEvent(m.body).event === SystemEventKind.MemberAdded);
  await alice.addMembers(group.id, [c.user]);
  const ev = decodeSystemEvent((await added).body);
  assert.deepEqual([ev.actor, ev.users], [a.user, [c.user]]);
  await alice.renameGroup(group.id, "bouldering");
  assert.equal((await carol.getThread(group.id)).name, "bouldering");
  await assert.rejects(bob.removeMember(group.id, c.user), (e: unknown) => e instanceof ClientError && e.code === ErrorCode.NotAdmin);

  await alice.contactAdd(b.user);
  assert.deepEqual((await alice.contacts()).map((u) => u.id), [b.user]);
  const presence = await alice.presenceQuery([b.user]);
  assert.equal(presence[0]!.online, true);
  await alice.presenceSubscribe([b.user]);
  const offline = next(alice, "presence", 10_000, (p) => p.user === b.user && !p.online);
  bob.close();
  await offline;

  const data = new Uint8Array(150_000).map((_, i) => (i * 31) & 0xff);
  // BLAKE3 of `data`, the media id (computed with the Rust blake3 crate).
  const hash = Uint8Array.from(Buffer.from("777cc94c5c6ed2e0eb690d0dbf567777b3a1abc958b1a96e9eebf46cea968373", "hex"));
  const ref = await alice.uploadMedia("application/octet-stream", data, hash);
  assert.equal(ref.totalLen, 150_000n);
  assert.deepEqual(ref.media, hash);
  // Only the uploader and members of a thread it was sent in may download it.
  await assert.rejects(carol.downloadMedia(ref.media), (e: unknown) => e instanceof ClientError && e.code === ErrorCode.UnknownMedia);
  await alice.send(group.id, MessageKind.Media, ref.media);
  const back = await carol.downloadMedia(ref.media, group.id);
  assert.deepEqual(back, data);
  assert.deepEqual((await carol.users([a.user, c.user])).map((u) => u.handle), [a.handle, c.handle]);
  alice.close();
  carol.close();
});

test("a dropped connection resumes on the real server and syncs what was missed, once", { skip }, async () => {
  // A gate in front of TCP: while closed, connecting fails as an unreachable server would.
  let gateOpen = true;
  const tcp = tcpConnector();
  const gated: Connector = (url, handlers) => {
    if (!gateOpen) {
      queueMicrotask(() => handlers.onClose("gate closed (test)"));
      return { send() {}, close() {} };
    }
    return tcp(url, handlers);
  };
  const storage = new MemoryStorage();
  const alice = await connect({ connector: gated, autoReconnect: true, storage, backoff: { initialMs: 50, maxMs: 200, factor: 2, jitter: 0 } });
  const bob = await connect();
  await alice.register(handle("alice"), "password1");
  const b = await bob.register(handle("bob"), "password1");
  const thread = await bob.openDirect(alice.userId!);
  const got: string[] = [];
  alice.on("message", (m) => got.push(utf8(m.body)));
  const first = next(alice, "message");
  await bob.sendText(thread.id, "before");
  await first;

  gateOpen = false;
  const disconnected = next(alice, "disconnected");
  alice.breakConnectionForTest();
  await disconnected;
  await bob.sendText(thread.id, "while away 1");
  await bob.sendText(thread.id, "while away 2");
  const reconnected = next(alice, "reconnected");
  gateOpen = true;
  await reconnected;
  const live = next(alice, "message", 5000, (m) => utf8(m.body) === "after");
  await bob.sendText(thread.id, "after");
  await live;
  assert.deepEqual(got, ["before", "while away 1", "while away 2", "after"]);
  assert.equal(b.handle.startsWith("bob"), true);

  // A new client with the same storage resumes with the kept token.
  alice.close();
  const again = await connect({ storage });
  assert.equal((await again.resumeSaved()).user, alice.userId);
  await again.logout();
  assert.equal(storage.getItem("courier.token"), null);
  const third = await connect();
  await assert.rejects(third.resume(again.token!), (e: unknown) => e instanceof ClientError && e.code === ErrorCode.InvalidToken);
  third.close();
  bob.close();
});

test("replies, edits and reactions through the real server: pushes, meta, history, sync, errors", { skip }, async () => {
  let gateOpen = true;
  const tcp = tcpConnector();
  const gated: Connector = (url, handlers) => {
    if (!gateOpen) {
      queueMicrotask(() => handlers.onClose("gate closed (test)"));
      return { send() {}, close() {} };
    }
    return tcp(url, handlers);
  };
  const alice = await connect({ connector: gated, autoReconnect: true, backoff: { initialMs: 50, maxMs: 200, factor: 2, jitter: 0 } });
  const bob = await connect();
  const a = await alice.register(handle("alice"), "password1");
  const b = await bob.register(handle("bob"), "password1");
  const thread = await bob.openDirect(a.user);
  const log: string[] = [];
  alice.on("message", (m) => log.push(m.kind === MessageKind.System ? `system:${decodeSystemEvent(m.body).event}` : utf8(m.body)));
  alice.on("messageMeta", ({ meta }) => log.push(`meta:${meta.id}:${meta.replyTo}`));

  const first = next(alice, "message");
  const q = await bob.sendText(thread.id, "lunch?");
  await first;
  const metaPushed = next(alice, "messageMeta");
  const r = await bob.sendReply(thread.id, q.message, "or dinner?");
  assert.deepEqual(await metaPushed, { thread: thread.id, meta: { id: r.message, replyTo: q.message, editedAt: 0n, reactions: [], mine: "" } });
  assert.deepEqual(log, ["lunch?", "or dinner?", `meta:${r.message}:${q.message}`], "the meta right after its message");

  const edited = next(alice, "message", 5000, (m) => m.kind === MessageKind.System);
  await bob.edit(thread.id, q.message, "lunch at 1?");
  const ev = decodeSystemEvent((await edited).body);
  assert.deepEqual([ev.event, ev.actor, ev.subject, utf8(ev.body)], [SystemEventKind.Edited, b.user, q.message, "lunch at 1?"]);
  const reacted = next(bob, "message", 5000, (m) => m.kind === MessageKind.System && decodeSystemEvent(m.body).event === SystemEventKind.Reacted);
  await alice.react(thread.id, q.message, "👍");
  assert.deepEqual(decodeSystemEvent((await reacted).body).reactions, [{ reaction: "👍", count: 1 }]);

  const page = await alice.history(thread.id, 0n, Direction.Backward, 20);
  const qMeta = page.meta.find((m) => m.id === q.message)!;
  assert.equal(utf8(page.messages.find((m) => m.id === q.message)!.body), "lunch at 1?");
  assert.deepEqual([qMeta.reactions, qMeta.mine, qMeta.editedAt > q.message], [[{ reaction: "👍", count: 1 }], "👍", true]);
  assert.equal(page.meta.find((m) => m.id === r.message)!.replyTo, q.message);

  await assert.rejects(alice.edit(thread.id, q.message, "not mine"), (e: unknown) => e instanceof ClientError && e.code === ErrorCode.NotSender);
  await assert.rejects(alice.react(thread.id, q.message, "two words"), (e: unknown) => e instanceof ClientError && e.code === ErrorCode.InvalidReaction);
  await assert.rejects(alice.sendReply(thread.id, 12345n, "to nothing"), (e: unknown) => e instanceof ClientError && e.code === ErrorCode.UnknownMessage);

  // Away: a reply and a reaction come back by sync, each message followed by its meta.
  gateOpen = false;
  const disconnected = next(alice, "disconnected");
  alice.breakConnectionForTest();
  await disconnected;
  log.length = 0;
  const away = await bob.sendReply(thread.id, r.message, "dinner it is");
  await bob.react(thread.id, q.message, "🎉");
  const reconnected = next(alice, "reconnected");
  gateOpen = true;
  await reconnected;
  assert.deepEqual(log, ["dinner it is", `meta:${away.message}:${r.message}`, `system:${SystemEventKind.Reacted}`]);
  alice.close();
  bob.close();
});

test("LOGIN_THROTTLED from the real server carries its retry hint as retryAfterSecs", { skip }, async () => {
  const client = await connect();
  const victim = handle("victim");
  await client.register(victim, "password1");
  client.close();
  const other = await connect();
  let throttled: ClientError | undefined;
  // 5 failures without delay, then the next must wait (PROTOCOL.md section 9).
  for (let i = 0; i < 8 && throttled === undefined; i++) {
    try {
      await other.login(victim, "wrong password");
      assert.fail("a wrong password logged in");
    } catch (e) {
      assert.ok(e instanceof ClientError);
      if (e.code === ErrorCode.LoginThrottled) throttled = e;
      else assert.equal(e.code, ErrorCode.BadCredentials);
    }
  }
  assert.ok(throttled, "throttled within 8 attempts");
  assert.ok(throttled.retryAfterSecs !== undefined && throttled.retryAfterSecs >= 1, throttled.message);
  other.close();
});
