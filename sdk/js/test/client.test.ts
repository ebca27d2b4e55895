/**
 * The client against the in-memory fake server: requests and replies, events, token
 * persistence, reconnect with backoff, resume and sync, dedupe of pushes against the sync
 * backlog, send with retry, redirects, heartbeat. Time is a manual clock; every race is
 * driven by hand.
 */

import assert from "node:assert/strict";
import { test } from "node:test";

import { Client, newClientMsgId, type ClientConfig, type ClientEvents } from "../src/client.js";
import { ClientError } from "../src/client_error.js";
import { ErrorCode } from "../src/errors.js";
import {
  decodeSystemEvent,
  frame,
  MessageKind,
  ReceiptKind,
  SystemEventKind,
  type Frame,
  type Message,
  type MessageMeta,
} from "../src/frames.js";
import { MemoryStorage } from "../src/storage.js";
import type { Connector } from "../src/transport.js";
import { FakeServer, ManualClock, settle, type FakeConn } from "./fake_server.js";

const text = (m: Message) => new TextDecoder().decode(m.body);

interface World {
  server: FakeServer;
  clock: ManualClock;
}

function world(): World {
  return { server: new FakeServer(), clock: new ManualClock() };
}

function connect(w: World, extra: ClientConfig = {}): Promise<Client> {
  return Client.connect("ws://chat.test:7880/", {
    connector: w.server.connector,
    insecurePlaintext: true, // the fake server speaks plaintext; noise_client.test.ts encrypts
    clock: w.clock,
    random: () => 0.5, // no jitter: 1 - j + 2j * 0.5 = 1
    storage: new MemoryStorage(),
    ...extra,
  });
}

/** Records every event a client emits, in order. */
function record(client: Client): Array<[string, unknown]> {
  const log: Array<[string, unknown]> = [];
  const names: Array<keyof ClientEvents> = [
    "message", "messageMeta", "receipt", "presence", "typing", "threadUpdated",
    "disconnected", "redirected", "reconnected", "sessionEnded",
  ];
  for (const name of names) client.on(name, (v) => log.push([name, v]));
  return log;
}

function serverConnOf(w: World, user: bigint): FakeConn {
  const found = [...w.server.conns].filter((c) => c.user === user);
  assert.equal(found.length, 1, "one live connection of the user");
  return found[0]!;
}

/** alice and bob registered, each on a client, with a direct thread between them. */
async function pair(w: World, aliceConfig: ClientConfig = {}) {
  const alice = await connect(w, aliceConfig);
  const bob = await connect(w);
  const a = await alice.register("alice", "password1");
  const b = await bob.register("bob", "password1");
  const thread = await alice.openDirect(b.user);
  return { alice, bob, a, b, thread };
}

test("requests get their own replies, pushes become events", async () => {
  const w = world();
  const { alice, bob, a, b, thread } = await pair(w);
  assert.equal(alice.userId, a.user);
  assert.equal((await bob.openDirect(a.user)).id, thread.id, "the same direct thread");
  const bobLog = record(bob);

  // Three sends in flight at once; each promise gets its own SENT.
  const sent = await Promise.all([1, 2, 3].map((i) => alice.sendText(thread.id, `m${i}`)));
  assert.deepEqual(sent.map((s) => s.thread), [thread.id, thread.id, thread.id]);
  assert.ok(sent[0]!.message < sent[1]!.message && sent[1]!.message < sent[2]!.message);
  await settle();
  const messages = bobLog.filter(([n]) => n === "message").map(([, m]) => text(m as Message));
  assert.deepEqual(messages, ["m1", "m2", "m3"]);

  alice.typing(thread.id, true);
  await alice.receipt(thread.id, ReceiptKind.Read, sent[2]!.message);
  await settle();
  assert.deepEqual(bobLog.slice(3), [
    ["typing", { thread: thread.id, user: a.user, active: true }],
    ["receipt", { thread: thread.id, user: a.user, kind: ReceiptKind.Read, upTo: sent[2]!.message }],
  ]);
  assert.equal(b.handle, "bob");
});

test("an ERROR_REPLY rejects with the code and a sentence; a wrong reply type is named", async () => {
  const w = world();
  const client = await connect(w);
  await client.register("alice", "password1");
  await assert.rejects(client.lookupUser("nobody"), (e: unknown) => {
    assert.ok(e instanceof ClientError);
    assert.equal(e.code, ErrorCode.UnknownUser);
    assert.match(e.message, /UnknownUser \(45\): no such user/);
    return true;
  });
  w.server.intercept = (conn, id, f) => {
    if (f.type !== "ContactList") return false;
    conn.reply(id, frame("Done", {}));
    return true;
  };
  await assert.rejects(client.contacts(), /unexpected reply to ContactList: got Done/);
});

test("a request with no reply times out; its late reply is dropped", async () => {
  const w = world();
  const client = await connect(w, { requestTimeoutMs: 2000 });
  await client.register("alice", "password1");
  let held: [FakeConn, number] | undefined;
  w.server.intercept = (conn, id, f) => {
    if (f.type !== "ContactList") return false;
    held = [conn, id];
    return true;
  };
  const pending = client.contacts();
  const outcome = pending.then(
    () => "resolved",
    (e: ClientError) => e.detail.kind,
  );
  await w.clock.advance(1999);
  assert.ok(held, "the request reached the server");
  await w.clock.advance(1);
  assert.equal(await outcome, "Timeout");
  held![0].reply(held![1], frame("Contacts", { users: [] }));
  w.server.intercept = undefined;
  await settle();
  assert.deepEqual(await client.contacts(), [], "the connection is still fine");
});

test("the token is kept in the storage: a new client resumes with it; logout forgets it", async () => {
  const w = world();
  const storage = new MemoryStorage();
  const first = await connect(w, { storage });
  const auth = await first.register("alice", "password1");
  assert.equal(storage.getItem("courier.token")?.length, 64);
  first.close();

  const second = await connect(w, { storage });
  assert.ok(second.hasSavedSession());
  const resumed = await second.resumeSaved();
  assert.equal(resumed.user, auth.user);
  assert.deepEqual(w.server.opened.at(-1)!.sent("Resume").length, 1);
  await second.logout();
  assert.equal(storage.getItem("courier.token"), null, "logout forgets the token");

  const third = await connect(w, { storage });
  await assert.rejects(third.resumeSaved(), /not logged in/);
});

test("a saved token the server no longer knows is refused and forgotten", async () => {
  const w = world();
  const storage = new MemoryStorage();
  const first = await connect(w, { storage });
  const auth = await first.register("alice", "password1");
  first.close();
  w.server.revokeTokens(auth.user);
  const second = await connect(w, { storage });
  await assert.rejects(second.resumeSaved(), (e: unknown) => e instanceof ClientError && e.code === ErrorCode.InvalidToken);
  assert.equal(second.hasSavedSession(), false);
});

test("a dropped connection reconnects with backoff, resumes and syncs what was missed, once", async () => {
  const w = world();
  const { alice, bob, b, thread } = await pair(w, { autoReconnect: true });
  const log = record(alice);
  await bob.sendText(thread.id, "before");
  await settle();
  assert.deepEqual(log.map(([n, v]) => (n === "message" ? text(v as Message) : n)), ["before"]);

  // The network fails; bob writes while alice is away; the first two attempts fail.
  w.server.refuse = "connection refused (test)";
  serverConnOf(w, alice.userId!).drop();
  await settle();
  assert.equal(alice.isConnected, false);
  await bob.sendText(thread.id, "while away 1");
  await bob.sendText(thread.id, "while away 2");
  const opened = w.server.opened.length;

  // Delays 100 ms, 200 ms, 400 ms (no jitter): attempt 1 is immediate and refused.
  await w.clock.advance(99);
  assert.equal(alice.isConnected, false);
  await w.clock.advance(1); // attempt 2 at +100 ms: refused
  await w.clock.advance(199);
  w.server.refuse = undefined;
  assert.equal(w.server.opened.length, opened, "nothing opened while refused");
  await w.clock.advance(1); // attempt 3 at +300 ms: works
  assert.equal(alice.isConnected, true);
  const conn = w.server.opened.at(-1)!;
  assert.deepEqual(conn.received.map((e) => e.frame.type), ["Hello", "Resume", "Sync"]);
  assert.equal(conn.sent("Sync").length, 1);

  const names = log.map(([n, v]) => (n === "message" ? text(v as Message) : n));
  assert.deepEqual(names, ["before", "disconnected", "threadUpdated", "while away 1", "while away 2", "reconnected"]);
  // Only what was missed: the sync started from the watermark kept after "before".
  await bob.sendText(thread.id, "after");
  await settle();
  assert.equal(log.filter(([n]) => n === "message").length, 4);
  assert.equal(b.handle, "bob");
});

test("a push that arrives while the catch-up sync runs comes out after the backlog, once", async () => {
  const w = world();
  const { alice, bob, thread } = await pair(w, { autoReconnect: true });
  const log = record(alice);
  // Hold the SYNC of the reconnect; meanwhile a new message is pushed on the new connection,
  // and the same message arrives again inside the sync's answer.
  let heldSync: [FakeConn, number, Frame] | undefined;
  w.server.intercept = (conn, id, f) => {
    if (f.type !== "Sync") return false;
    heldSync = [conn, id, f];
    return true;
  };
  const oldConn = serverConnOf(w, alice.userId!);
  const missed = w.server.storeText(thread.id, bob.userId!, "missed");
  oldConn.drop();
  await settle();
  assert.ok(heldSync, "the sync is in flight (the first attempt is immediate)");
  assert.notEqual(heldSync[0], oldConn);
  const live = w.server.storeText(thread.id, bob.userId!, "live");
  heldSync[0].reply(0, frame("MessagePush", { message: live, replyTo: 0n }));
  await settle();
  assert.deepEqual(log.map(([n]) => n), ["disconnected"], "held during the sync");
  heldSync[0].reply(heldSync[1], w.server.syncBatch(alice.userId!, heldSync[2] as Frame & { type: "Sync" }));
  await settle();
  const messages = log.filter(([n]) => n === "message").map(([, m]) => (m as Message).id);
  assert.deepEqual(messages, [missed.id, live.id], "backlog first, then the held push, each once");
  assert.equal(log.at(-1)![0], "reconnected");
});

/** The log as short names: message text (or the system event's kind), meta as `meta:<reply_to>`. */
function brief(log: Array<[string, unknown]>): string[] {
  return log.map(([n, v]) => {
    if (n === "message") {
      const m = v as Message;
      return m.kind === MessageKind.System ? `system:${decodeSystemEvent(m.body).event}` : text(m);
    }
    if (n === "messageMeta") return `meta:${(v as { meta: MessageMeta }).meta.replyTo}`;
    return n;
  });
}

test("replies, edits and reactions: a pushed reply is followed by its meta; EDITED and REACTED reach every member", async () => {
  const w = world();
  const { alice, bob, thread } = await pair(w);
  const aliceLog = record(alice);
  const bobLog = record(bob);
  const q = await alice.sendText(thread.id, "lunch?");
  const r = await bob.sendReply(thread.id, q.message, "yes");
  await settle();
  const sends = serverConnOf(w, bob.userId!).sent("Send") as Array<Frame & { type: "Send" }>;
  assert.equal(sends.at(-1)!.replyTo, q.message, "SEND carries reply_to");
  // The fake, like the server, pushes nothing back to the sending connection.
  assert.deepEqual(brief(aliceLog), ["yes", `meta:${q.message}`], "the meta right after its message");
  assert.deepEqual(aliceLog.at(-1)![1], {
    thread: thread.id,
    meta: { id: r.message, replyTo: q.message, editedAt: 0n, reactions: [], mine: "" },
  });

  await alice.edit(thread.id, q.message, "lunch at 1?");
  await bob.react(thread.id, q.message, "👍");
  await settle();
  assert.deepEqual(brief(bobLog).slice(-2), [`system:${SystemEventKind.Edited}`, `system:${SystemEventKind.Reacted}`]);
  const reacted = decodeSystemEvent((bobLog.at(-1)![1] as Message).body);
  assert.deepEqual([reacted.subject, reacted.text, reacted.reactions], [q.message, "👍", [{ reaction: "👍", count: 1 }]]);
  const edited = decodeSystemEvent((bobLog.at(-2)![1] as Message).body);
  assert.equal(new TextDecoder().decode(edited.body), "lunch at 1?");

  const page = await bob.history(thread.id, 0n, 0, 10);
  const meta = page.meta.find((m) => m.id === q.message)!;
  assert.deepEqual([meta.reactions, meta.mine, meta.editedAt !== 0n], [[{ reaction: "👍", count: 1 }], "👍", true]);
  await bob.react(thread.id, q.message, "");
  assert.equal((await bob.history(thread.id, 0n, 0, 10)).meta.some((m) => m.id === q.message), true, "still edited");
});

test("a reply pushed during the catch-up sync keeps its meta right after it", async () => {
  const w = world();
  const { alice, bob, thread } = await pair(w, { autoReconnect: true });
  const q = await alice.sendText(thread.id, "q");
  await settle();
  const log = record(alice);
  let heldSync: [FakeConn, number, Frame] | undefined;
  w.server.intercept = (conn, id, f) => {
    if (f.type !== "Sync") return false;
    heldSync = [conn, id, f];
    return true;
  };
  serverConnOf(w, alice.userId!).drop();
  await settle();
  assert.ok(heldSync);
  // The sync's answer is taken before the reply is stored: the reply comes only as the push.
  const batch = w.server.syncBatch(alice.userId!, heldSync[2] as Frame & { type: "Sync" });
  const live = w.server.storeText(thread.id, bob.userId!, "live reply");
  heldSync[0].reply(0, frame("MessagePush", { message: live, replyTo: q.message }));
  await settle();
  assert.deepEqual(brief(log), ["disconnected"], "held during the sync");
  heldSync[0].reply(heldSync[1], batch);
  await settle();
  // "q" is alice's own, never pushed to her: the sync recovers it.
  assert.deepEqual(brief(log), ["disconnected", "threadUpdated", "q", "live reply", `meta:${q.message}`, "reconnected"]);
});

test("messages recovered by sync after a reconnect are each followed by their meta from SYNC_BATCH.meta", async () => {
  const w = world();
  const { alice, bob, thread } = await pair(w, { autoReconnect: true });
  const q = await alice.sendText(thread.id, "q");
  await settle();
  const log = record(alice);
  w.server.refuse = "connection refused (test)";
  serverConnOf(w, alice.userId!).drop();
  await settle();
  const r = await bob.sendReply(thread.id, q.message, "a reply while away");
  await bob.react(thread.id, q.message, "🎉");
  await bob.sendText(thread.id, "plain");
  w.server.refuse = undefined;
  await w.clock.advance(100);
  assert.deepEqual(brief(log), [
    "disconnected",
    "threadUpdated",
    "q",
    "meta:0", // q has a reaction now
    "a reply while away",
    `meta:${q.message}`,
    `system:${SystemEventKind.Reacted}`,
    "plain",
    "reconnected",
  ]);
  const metas = log.filter(([n]) => n === "messageMeta").map(([, v]) => v);
  assert.deepEqual(metas, [
    { thread: thread.id, meta: { id: q.message, replyTo: 0n, editedAt: 0n, reactions: [{ reaction: "🎉", count: 1 }], mine: "" } },
    { thread: thread.id, meta: { id: r.message, replyTo: q.message, editedAt: 0n, reactions: [], mine: "" } },
  ]);
});

test("LOGIN_THROTTLED exposes its retry hint as retryAfterSecs", async () => {
  const w = world();
  const client = await connect(w);
  w.server.intercept = (conn, id, f) => {
    if (f.type !== "Login") return false;
    conn.reply(id, frame("ErrorReply", { code: ErrorCode.LoginThrottled, message: "too many failed logins; wait, then retry [retry_after_secs=30]" }));
    return true;
  };
  await assert.rejects(client.login("alice", "password1"), (e: unknown) => {
    assert.ok(e instanceof ClientError);
    assert.equal(e.code, ErrorCode.LoginThrottled);
    assert.equal(e.retryAfterSecs, 30);
    return true;
  });
  w.server.intercept = undefined;
  await assert.rejects(client.login("nobody", "x"), (e: unknown) => e instanceof ClientError && e.retryAfterSecs === undefined);
});

test("pushes held during the catch-up are bounded: past the bound the oldest is dropped and a second sync recovers it", async () => {
  const w = world();
  const { alice, bob, thread } = await pair(w, { autoReconnect: true, maxHeldPushes: 3 });
  const log = record(alice);
  let heldSync: [FakeConn, number, Frame] | undefined;
  w.server.intercept = (conn, id, f) => {
    if (f.type !== "Sync" || heldSync !== undefined) return false;
    heldSync = [conn, id, f];
    return true;
  };
  serverConnOf(w, alice.userId!).drop();
  await settle();
  assert.ok(heldSync);
  const conn = heldSync[0];
  // The first sync's answer is taken before the pushes: they are not in it.
  const batch = w.server.syncBatch(alice.userId!, heldSync[2] as Frame & { type: "Sync" });
  const pushed: bigint[] = [];
  for (let i = 1; i <= 5; i++) {
    const m = w.server.storeText(thread.id, bob.userId!, `p${i}`);
    pushed.push(m.id);
    conn.reply(0, frame("MessagePush", { message: m, replyTo: 0n }));
  }
  await settle();
  assert.deepEqual(brief(log), ["disconnected"], "held (3 of them) during the sync");
  conn.reply(heldSync[1], batch);
  await settle();
  const syncs = conn.sent("Sync") as Array<Frame & { type: "Sync" }>;
  assert.equal(syncs.length, 2, "p1 and p2 were dropped: a second sync runs");
  assert.equal(syncs[1]!.since, batch.type === "SyncBatch" ? batch.watermark : -1n, "from the first one's watermark");
  assert.deepEqual(brief(log), ["disconnected", "threadUpdated", "p1", "p2", "p3", "p4", "p5", "reconnected"], "every push once, in order");
});

test("sync pages through the server's batches and keeps one watermark for the walk", async () => {
  const w = world();
  const { alice, bob, thread } = await pair(w, { syncPage: 2 });
  const start = alice.watermark!;
  for (let i = 0; i < 5; i++) w.server.storeText(thread.id, bob.userId!, `m${i}`);
  const result = await alice.sync();
  assert.deepEqual(result.messages.map(text), ["m0", "m1", "m2", "m3", "m4"]);
  const syncs = serverConnOf(w, alice.userId!).sent("Sync") as Array<Frame & { type: "Sync" }>;
  assert.equal(syncs.length, 3, "pages of 2, 2 and 1");
  assert.ok(syncs.every((s) => s.since === start));
  assert.equal(syncs[0]!.watermark, 0n, "a new walk");
  assert.equal(syncs[1]!.watermark, result.watermark, "later pages carry the first page's watermark");
  assert.equal(syncs[2]!.afterMessage, result.messages[3]!.id);
  assert.equal(alice.watermark, result.watermark);
});

test("send with retry resends the same client id after a reconnect; the server stores it once", async () => {
  const w = world();
  const { alice, thread } = await pair(w, { autoReconnect: true });
  // The first SEND reaches the server and is stored, but the connection dies before SENT.
  let first = true;
  w.server.intercept = (conn, id, f) => {
    if (f.type !== "Send" || !first) return false;
    first = false;
    w.server.answer({ ...conn, reply: () => {} } as unknown as FakeConn, id, f);
    conn.drop();
    return true;
  };
  const sent = alice.sendWithRetry(thread.id, MessageKind.Text, "exactly once", 60_000);
  await settle();
  await w.clock.advance(100);
  const result = await sent;
  const sends = w.server.opened.flatMap((c) => c.sent("Send")) as Array<Frame & { type: "Send" }>;
  assert.equal(sends.length, 2);
  assert.equal(sends[0]!.clientMsgId, sends[1]!.clientMsgId);
  assert.equal(w.server.threads.get(thread.id)!.messages.length, 1);
  assert.equal(result.clientMsgId, sends[0]!.clientMsgId);
});

test("a redirect instead of AUTH_OK is followed to the other node", async () => {
  const w = world();
  const registrar = await connect(w);
  await registrar.register("alice", "password1");
  w.server.intercept = (conn, _id, f) => {
    if (f.type !== "Login" || conn.url !== "ws://chat.test:7880/") return false;
    conn.reply(0, frame("Redirect", { node: "n2", addr: "node2.test:7881", key: new Uint8Array(0) }));
    conn.drop();
    return true;
  };
  const client = await connect(w);
  const log = record(client);
  const auth = await client.login("alice", "password1");
  assert.equal(auth.handle, "alice");
  assert.equal(client.serverUrl, "ws://node2.test:7881/");
  assert.deepEqual(log, [
    ["redirected", { node: "n2", addr: "node2.test:7881" }],
    ["disconnected", { reason: undefined }],
  ]);
  assert.equal(w.server.opened.at(-1)!.url, "ws://node2.test:7881/");
  assert.deepEqual(w.server.opened.at(-1)!.received.map((e) => e.frame.type), ["Hello", "Login"]);
  assert.ok(client.isConnected);
});

test("a revoked session ends: no reconnect, the token is forgotten", async () => {
  const w = world();
  const storage = new MemoryStorage();
  const client = await connect(w, { autoReconnect: true, storage });
  await client.register("alice", "password1");
  const log = record(client);
  serverConnOf(w, client.userId!).closeWith(ErrorCode.SessionRevoked, "logged out elsewhere");
  await settle();
  assert.deepEqual(log, [
    ["disconnected", { reason: ErrorCode.SessionRevoked }],
    ["sessionEnded", { reason: ErrorCode.SessionRevoked }],
  ]);
  const opened = w.server.opened.length;
  await w.clock.advance(60_000);
  assert.equal(w.server.opened.length, opened, "no reconnect");
  assert.equal(storage.getItem("courier.token"), null);
  await assert.rejects(client.contacts(), /server closed it: SessionRevoked/);
});

test("heartbeat: PING on schedule; a silent server is given up and reconnected", async () => {
  const w = world();
  w.server.heartbeatSecs = 10;
  const client = await connect(w, { autoReconnect: true });
  await client.register("alice", "password1");
  const log = record(client);
  const conn = serverConnOf(w, client.userId!);
  await w.clock.advance(10_000);
  assert.equal(conn.sent("Ping").length, 1);
  // From now on the server says nothing at all on this connection.
  w.server.intercept = (c) => c === conn;
  await w.clock.advance(20_000);
  assert.equal(conn.sent("Ping").length, 3);
  assert.ok(client.isConnected, "alive until three silent intervals");
  await w.clock.advance(10_000);
  assert.equal(log[0]![0], "disconnected");
  await w.clock.advance(100);
  assert.ok(client.isConnected);
  assert.equal(log.at(-1)![0], "reconnected");
  assert.notEqual(serverConnOf(w, client.userId!), conn);
});

test("without auto-reconnect a dropped connection ends the session; calls say disconnected", async () => {
  const w = world();
  const client = await connect(w);
  await client.register("alice", "password1");
  const log = record(client);
  const pending = client.contacts();
  w.server.intercept = () => true;
  serverConnOf(w, client.userId!).drop();
  await assert.rejects(pending, (e: unknown) => e instanceof ClientError && e.isConnectionError());
  assert.deepEqual(log.map(([n]) => n), ["disconnected", "sessionEnded"]);
  await assert.rejects(client.contacts(), /not connected to the server/);
});

test("an unreachable server rejects connect with a sentence that says what to check", async () => {
  const w = world();
  w.server.refuse = "connection refused";
  await assert.rejects(connect(w), /cannot reach the Courier server at ws:\/\/chat.test:7880\/: connection refused/);
});

test("a transport that reports open before its connector returns still gets HELLO", async () => {
  const w = world();
  const syncOpen: Connector = (url, handlers) => {
    const inner = w.server.connector(url, { ...handlers, onOpen: () => {} });
    handlers.onOpen();
    return inner;
  };
  let client: Client | undefined;
  void connect(w, { connector: syncOpen }).then((c) => (client = c));
  await settle();
  assert.ok(client, "WELCOME arrived");
  assert.deepEqual(w.server.opened[0]!.received.map((e) => e.frame.type), ["Hello"]);
  assert.equal((await client.register("alice", "password1")).handle, "alice");
});

test("a redirect on a logged-in connection moves the session to the other node with RESUME", async () => {
  const w = world();
  const client = await connect(w); // no autoReconnect: a redirect is still followed
  const auth = await client.register("alice", "password1");
  const log = record(client);
  serverConnOf(w, auth.user).reply(0, frame("Redirect", { node: "n2", addr: "node2.test:7881", key: new Uint8Array(0) }));
  await settle();
  assert.deepEqual(log.map(([n]) => n), ["redirected", "disconnected", "reconnected"]);
  assert.deepEqual(log.at(-1)![1], { url: "ws://node2.test:7881/" });
  const moved = w.server.opened.at(-1)!;
  assert.equal(moved.url, "ws://node2.test:7881/");
  assert.deepEqual(moved.received.map((e) => e.frame.type), ["Hello", "Resume", "Sync"]);
  assert.equal(client.serverUrl, "ws://node2.test:7881/");
  assert.deepEqual(await client.contacts(), []);
});

test("a login redirected in a loop gives up with TooManyRedirects", async () => {
  const w = world();
  const registrar = await connect(w);
  await registrar.register("alice", "password1");
  let hops = 0;
  w.server.intercept = (conn, _id, f) => {
    if (f.type !== "Login") return false;
    hops++;
    conn.reply(0, frame("Redirect", { node: `n${hops}`, addr: `node${hops}.test:7881`, key: new Uint8Array(0) }));
    conn.drop();
    return true;
  };
  const client = await connect(w);
  await assert.rejects(client.login("alice", "password1"), (e: unknown) => {
    assert.ok(e instanceof ClientError && e.detail.kind === "TooManyRedirects", String(e));
    assert.match(e.message, /redirected too many times \(last: n5 at node5\.test:7881\)/);
    return true;
  });
  assert.equal(hops, 5, "the first try and four redirects");
});

/**
 * A stand-in for the Noise layer, to show where it sits: a Connector that wraps another, runs
 * a handshake on the inner bytes before it reports open, then transforms every byte both ways
 * (XOR here, ChaCha20-Poly1305 records there).
 */
function layered(inner: Connector): Connector {
  const xor = (b: Uint8Array) => b.map((x) => x ^ 0x5a);
  return (url, handlers) => {
    let ready = false;
    const t = inner(url, {
      onOpen: () => t.send(Uint8Array.of(0x55)),
      onBytes: (b) => {
        if (ready) return handlers.onBytes(xor(b));
        assert.equal(b[0], 0xaa, "the server's handshake byte");
        ready = true;
        handlers.onOpen();
        if (b.length > 1) handlers.onBytes(xor(b.subarray(1)));
      },
      onClose: handlers.onClose,
    });
    return { send: (b) => t.send(xor(b)), close: () => t.close() };
  };
}

test("a layer under the codec (where Noise goes) needs no change above it", async () => {
  const w = world();
  const xor = (b: Uint8Array) => b.map((x) => x ^ 0x5a);
  // The layer's server end, in front of the fake: answers the handshake byte, then decodes
  // what the client sends and encodes what the fake answers.
  const serverEnd: Connector = (url, toClient) => {
    let fake: ReturnType<Connector> | undefined;
    queueMicrotask(() => toClient.onOpen());
    return {
      send: (b) => {
        if (fake !== undefined) return fake.send(xor(b));
        assert.deepEqual([...b], [0x55], "the client's handshake byte comes first, alone");
        fake = w.server.connector(url, {
          onOpen: () => toClient.onBytes(Uint8Array.of(0xaa)),
          onBytes: (x) => toClient.onBytes(xor(x)),
          onClose: toClient.onClose,
        });
      },
      close: () => fake?.close(),
    };
  };
  const client = await connect(w, { connector: layered(serverEnd) });
  const auth = await client.register("alice", "password1");
  assert.equal(auth.handle, "alice");
  assert.deepEqual(w.server.opened[0]!.received.map((e) => e.frame.type), ["Hello", "Register"]);
});

test("client message ids increase and carry the wall clock in milliseconds", () => {
  const before = BigInt(Date.now());
  const ids = Array.from({ length: 10_000 }, () => newClientMsgId());
  const after = BigInt(Date.now());
  for (let i = 1; i < ids.length; i++) assert.ok(ids[i] > ids[i - 1], `id ${i} does not increase`);
  assert.ok(ids[0] >> 22n >= before, "the first id's clock is not before the call");
  assert.ok(ids[ids.length - 1] >> 22n <= after + 1n, "ten thousand ids run the clock ahead by at most 1 ms");
  assert.ok(ids.every((id) => id > 0n && id < 1n << 64n));
});
