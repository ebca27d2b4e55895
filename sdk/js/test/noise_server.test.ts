/**
 * The Noise transport against the real Rust server, encrypted as it runs by default: clients
 * connect over WebSocket through a small in-test WebSocket-to-TCP bridge (each binary message
 * carries bytes of the TCP stream, both ways: what the server's `--listen-ws` does) and
 * register, log in, send and receive, with IK (the key the server printed, pinned) and XX
 * (trust on first use); a wrong pin and a plaintext client are refused by the real server.
 *
 * Needs the server binary: `COURIER_BIN=path/to/courier` (`make test-js` sets it); skipped,
 * and says so, without it. The test stops the server and the bridge it starts.
 */

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";

import WebSocket, { WebSocketServer } from "ws";

import { Client, type ClientConfig, type ClientEvents } from "../src/client.js";
import { ClientError } from "../src/client_error.js";
import { ErrorCode } from "../src/errors.js";
import { tcpConnector } from "../src/node.js";
import { MemoryStorage } from "../src/storage.js";
import type { WebSocketConstructor } from "../src/transport.js";

const BIN = process.env.COURIER_BIN;
const skip = BIN === undefined || !existsSync(BIN) ? "COURIER_BIN is not set to a built courier binary (make test-js sets it)" : false;

let server: ChildProcess | undefined;
let bridge: WebSocketServer | undefined;
let dataDir = "";
let tcpAddr = "";
let wsUrl = "";
/** The key the server printed at start: what an operator hands to clients to pin. */
let serverKey = "";

before(async () => {
  if (skip) return;
  dataDir = mkdtempSync(join(tmpdir(), "courier-js-noise-"));
  const args = ["serve", "--listen", "127.0.0.1:0", "--shards", "2", "--argon2-m-kib", "64", "--data-dir", dataDir];
  server = spawn(BIN!, args, { stdio: ["ignore", "pipe", "ignore"] });
  tcpAddr = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("courier did not print its listening line within 20 s")), 20_000);
    createInterface({ input: server!.stdout! }).on("line", (line) => {
      const key = /^courier server key ([0-9a-f]{64})$/.exec(line);
      if (key) serverKey = key[1]!;
      const m = /^courier listening on (\S+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    server!.on("exit", (code) => reject(new Error(`courier exited with ${code} before listening`)));
  });
  assert.match(serverKey, /^[0-9a-f]{64}$/, "the server printed its key: it runs encrypted");
  const [host, port] = [tcpAddr.slice(0, tcpAddr.lastIndexOf(":")), Number(tcpAddr.slice(tcpAddr.lastIndexOf(":") + 1))];
  bridge = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  bridge.on("connection", (ws) => {
    const tcp = tcpConnect({ host, port, noDelay: true });
    tcp.on("data", (chunk) => ws.send(chunk, { binary: true }));
    tcp.on("close", () => ws.close());
    tcp.on("error", () => ws.close());
    ws.on("message", (data, isBinary) => {
      if (!isBinary) return ws.close(1003, "binary frames only");
      tcp.write(data as Buffer);
    });
    ws.on("close", () => tcp.destroy());
  });
  await new Promise((r) => bridge!.on("listening", r));
  wsUrl = `ws://127.0.0.1:${(bridge.address() as AddressInfo).port}/`;
});

after(async () => {
  if (bridge !== undefined) {
    for (const ws of bridge.clients) ws.terminate();
    await new Promise((r) => bridge!.close(r));
  }
  server?.kill("SIGTERM");
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

/** Over WebSocket through the bridge (Node 20 has no global WebSocket: the `ws` package's). */
function connect(extra: ClientConfig = {}): Promise<Client> {
  return Client.connect(wsUrl, { WebSocket: WebSocket as unknown as WebSocketConstructor, storage: new MemoryStorage(), ...extra });
}

function next<K extends keyof ClientEvents>(client: Client, name: K, ms = 5000): Promise<ClientEvents[K]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${String(name)} event within ${ms} ms`));
    }, ms);
    const off = client.on(name, (v) => {
      clearTimeout(timer);
      off();
      resolve(v);
    });
  });
}

const utf8 = (b: Uint8Array) => new TextDecoder().decode(b);
let seq = 0;
const handle = (p: string) => `${p}${process.pid % 10000}n${seq++}`;

/** Two users chat: alice registers, bob registers then logs in again; a message each way. */
async function chat(alice: Client, bob: Client, bobAgain: () => Promise<Client>): Promise<void> {
  const a = await alice.register(handle("alice"), "password1");
  const bHandle = handle("bob");
  const first = await bob.register(bHandle, "password1");
  bob.close();
  const b = await bobAgain();
  const auth = await b.login(bHandle, "password1");
  assert.equal(auth.user, first.user, "logged in through the encrypted channel");
  const thread = await alice.openDirect(auth.user);
  const pushed = next(b, "message");
  const sent = await alice.sendText(thread.id, "sealed with Noise 🔒");
  const m = await pushed;
  assert.equal(m.id, sent.message);
  assert.equal(utf8(m.body), "sealed with Noise 🔒");
  const back = next(alice, "message");
  await b.sendText(thread.id, "and back");
  const reply = await back;
  assert.equal(reply.sender, auth.user);
  assert.equal(utf8(reply.body), "and back");
  const history = await alice.history(thread.id, 0n, 1, 10);
  assert.deepEqual(history.messages.map((x) => utf8(x.body)).sort(), ["and back", "sealed with Noise 🔒"]);
  assert.equal(a.handle.startsWith("alice"), true);
  b.close();
}

test("IK over WebSocket: the key the server printed, pinned; register, log in, send and receive", { skip }, async () => {
  const alice = await connect({ serverKey });
  const bob = await connect({ serverKey });
  assert.equal(alice.serverKey, serverKey);
  await chat(alice, bob, () => connect({ serverKey }));
  alice.close();
});

test("XX over WebSocket: trust on first use learns the server's key; chat through it", { skip }, async () => {
  const alice = await connect({ trustOnFirstUse: true });
  const bob = await connect(); // the default is the same: encrypted, trust on first use
  assert.equal(alice.serverKey, serverKey, "the learned key is the one `courier keys show` prints");
  assert.equal(bob.serverKey, serverKey);
  await chat(alice, bob, () => connect({ serverKey: bob.serverKey! }));
  alice.close();
});

test("the Noise layer over plain TCP too (Node programs), and a reconnect with the learned key", { skip }, async () => {
  const alice = await Client.connect(`tcp://${tcpAddr}`, {
    connector: tcpConnector(),
    storage: new MemoryStorage(),
    autoReconnect: true,
    backoff: { initialMs: 50, maxMs: 200, factor: 2, jitter: 0 },
  });
  const me = await alice.register(handle("tcp"), "password1");
  const reconnected = next(alice, "reconnected");
  alice.breakConnectionForTest();
  await reconnected;
  assert.equal((await alice.lookupUser(me.handle)).id, me.user, "resumed through IK with the key learned by XX");
  alice.close();
});

test("the real server refuses a wrong pin (REJECT) and a plaintext client (ENCRYPTION_REQUIRED), saying what to do", { skip }, async () => {
  const wrong = serverKey.replace(/^./, (c) => (c === "0" ? "1" : "0"));
  await assert.rejects(connect({ serverKey: wrong }), (e: unknown) => {
    assert.ok(e instanceof ClientError && e.detail.kind === "Encryption", String(e));
    assert.equal(e.detail.error.detail.kind, "ServerKeyMismatch");
    assert.match(e.message, /do not connect/);
    return true;
  });
  await assert.rejects(connect({ insecurePlaintext: true }), (e: unknown) => {
    assert.ok(e instanceof ClientError, String(e));
    assert.equal(e.code, ErrorCode.EncryptionRequired);
    assert.match(e.message, /`serverKey` option/);
    return true;
  });
});
