/**
 * The client over the Noise transport, in memory: an encrypting front (the server side of the
 * handshake and records, as the Courier server does it) before the fake server. Trust on first
 * use by default, IK with a pinned or learned key, no fallback after a refusal, the errors a
 * person sees, and a tampered record closing the connection. The same over a real server is
 * in noise_server.test.ts.
 */

import assert from "node:assert/strict";
import { test } from "node:test";

import { Client, type ClientConfig } from "../src/client.js";
import { ClientError } from "../src/client_error.js";
import { encode } from "../src/codec.js";
import { ErrorCode } from "../src/errors.js";
import { frame } from "../src/frames.js";
import { Handshake, type Pattern } from "../src/noise/handshake.js";
import { keypairFromPrivate, keyToHex, NoiseError, type Keypair } from "../src/noise/keys.js";
import type { Transport as Records } from "../src/noise/record.js";
import { MemoryStorage } from "../src/storage.js";
import type { Connector, Transport } from "../src/transport.js";
import { FakeServer, ManualClock, settle } from "./fake_server.js";

/** The server's side of the encrypted transport in front of a FakeServer. */
class EncryptingFront {
  /** The pattern of every finished handshake, in order. */
  readonly patterns: Pattern[] = [];
  /** Why each refused handshake was refused (NoiseError kinds). */
  readonly refusals: string[] = [];
  /** Flip a bit in the next record to the client. */
  tamperNext = false;

  constructor(
    readonly server: FakeServer,
    public keypair: Keypair,
  ) {}

  get publicKey(): string {
    return keyToHex(this.keypair.publicKey);
  }

  readonly connector: Connector = (url, toClient) => {
    const hs = Handshake.responder({ local: this.keypair });
    let records: Records | undefined;
    let fake: Transport | undefined;
    let clientGone = false;
    const deliver = (bytes: Uint8Array) =>
      queueMicrotask(() => {
        if (!clientGone) toClient.onBytes(bytes);
      });
    const closeClient = (why: string) =>
      queueMicrotask(() => {
        if (!clientGone) toClient.onClose(why);
        clientGone = true;
      });
    queueMicrotask(() => toClient.onOpen());
    const fromClient = (bytes: Uint8Array) => {
      try {
        let input = bytes;
        if (records === undefined) {
          const done = hs.read(input);
          const reply = hs.takeOutput();
          if (reply !== undefined) deliver(reply);
          if (done === undefined) return;
          this.patterns.push(done.pattern);
          const rec = done.transport;
          records = rec;
          fake = this.server.connector(url, {
            onOpen: () => {},
            onBytes: (plain) => {
              const wire = rec.seal(plain);
              if (this.tamperNext) {
                this.tamperNext = false;
                wire[wire.length - 1]! ^= 1;
              }
              deliver(wire);
            },
            onClose: closeClient,
          });
          input = done.rest;
        }
        for (const plain of records.open(input)) fake!.send(plain);
      } catch (e) {
        if (!(e instanceof NoiseError)) throw e;
        // As the Courier server: what the handshake answered (REJECT), or ENCRYPTION_REQUIRED
        // in plaintext to a plaintext client, then close.
        this.refusals.push(e.detail.kind);
        const reply = hs.takeOutput();
        if (reply !== undefined) deliver(reply);
        if (e.detail.kind === "PlaintextPeer") {
          deliver(encode(0, frame("ErrorReply", { code: ErrorCode.EncryptionRequired, message: "this server requires the encrypted transport" })));
        }
        fake?.close();
        closeClient("the server closed the connection");
      }
    };
    return {
      send: (bytes) => {
        const copy = bytes.slice();
        queueMicrotask(() => {
          if (!clientGone) fromClient(copy);
        });
      },
      close: () => {
        clientGone = true;
        fake?.close();
      },
    };
  };
}

function world(seed = 0x53) {
  const server = new FakeServer();
  const front = new EncryptingFront(server, keypairFromPrivate(new Uint8Array(32).fill(seed)));
  return { server, front, clock: new ManualClock() };
}

function connect(w: ReturnType<typeof world>, extra: ClientConfig = {}): Promise<Client> {
  return Client.connect("ws://chat.test:7880/", {
    connector: w.front.connector,
    clock: w.clock,
    random: () => 0.5,
    storage: new MemoryStorage(),
    ...extra,
  });
}

test("by default the client is encrypted: XX learns the server's key, the reconnect pins it (IK)", async () => {
  const w = world();
  const alice = await connect(w, { autoReconnect: true });
  assert.equal(alice.serverKey, w.front.publicKey, "the learned key, for the app to pin");
  const auth = await alice.register("alice", "password1");
  assert.equal(auth.handle, "alice");
  assert.deepEqual(w.front.patterns, ["XX"]);
  assert.deepEqual(w.server.opened[0]!.received.map((e) => e.frame.type).slice(0, 2), ["Hello", "Register"], "frames arrive decrypted");

  w.server.opened[0]!.drop();
  await w.clock.advance(1);
  assert.equal(alice.isConnected, true);
  assert.deepEqual(w.front.patterns, ["XX", "IK"], "the reconnect used the learned key");
  assert.deepEqual(w.server.opened[1]!.received.map((e) => e.frame.type).slice(0, 2), ["Hello", "Resume"]);
  alice.close();
});

test("a pinned key runs IK only, and requests work through it", async () => {
  const w = world();
  const bobSide = await connect(w, { serverKey: w.front.publicKey.toUpperCase() });
  await bobSide.register("bob", "password1");
  const alice = await connect(w, { serverKey: ` ${w.front.publicKey}\n` });
  await alice.register("alice", "password1");
  const bob = await alice.lookupUser("bob");
  assert.equal(bob.handle, "bob");
  assert.deepEqual(w.front.patterns, ["IK", "IK"]);
  assert.equal(alice.serverKey, w.front.publicKey);
  alice.close();
  bobSide.close();
});

test("a client pinned to another key is refused with what to do, and never falls back to XX", async () => {
  const w = world();
  const other = keyToHex(keypairFromPrivate(new Uint8Array(32).fill(0x99)).publicKey);
  await assert.rejects(connect(w, { serverKey: other }), (e: unknown) => {
    assert.ok(e instanceof ClientError && e.detail.kind === "Encryption", String(e));
    assert.equal(e.detail.error.detail.kind, "ServerKeyMismatch");
    assert.match(e.message, /do not connect/);
    assert.match(e.message, /courier keys show/);
    assert.ok(e.message.includes(other), "names the pinned key");
    assert.equal(e.isConnectionError(), false, "retrying does not help");
    return true;
  });
  assert.deepEqual(w.front.refusals, ["ClientPinnedOtherKey"]);
  assert.deepEqual(w.front.patterns, [], "no second handshake");
  assert.equal(w.server.opened.length, 0, "no frame reached the server");
});

test("a server that changed its key is refused on reconnect: the session ends saying so", async () => {
  const w = world();
  const alice = await connect(w, { autoReconnect: true });
  await alice.register("alice", "password1");
  const ended = new Promise<ClientError | undefined>((resolve) => alice.on("sessionEnded", (e) => resolve(e.error)));
  w.front.keypair = keypairFromPrivate(new Uint8Array(32).fill(0x77));
  w.server.opened[0]!.drop();
  await w.clock.advance(1);
  const error = await ended;
  assert.ok(error !== undefined && error.detail.kind === "Encryption", String(error));
  assert.match(error.message, /not the one pinned/);
  assert.deepEqual(w.front.patterns, ["XX"], "no XX with the new key after the IK refusal");
  assert.deepEqual(w.front.refusals, ["ClientPinnedOtherKey"]);
  assert.equal(alice.isConnected, false);
});

test("a plaintext client is told ENCRYPTION_REQUIRED and how to configure this client", async () => {
  const w = world();
  await assert.rejects(connect(w, { insecurePlaintext: true }), (e: unknown) => {
    assert.ok(e instanceof ClientError, String(e));
    assert.equal(e.code, ErrorCode.EncryptionRequired);
    assert.match(e.message, /`serverKey` option/);
    return true;
  });
  assert.deepEqual(w.front.refusals, ["PlaintextPeer"]);
});

test("a plaintext-only server's answer to the handshake says to use insecurePlaintext", async () => {
  const w = world();
  // What a server run with --insecure-plaintext does: the handshake reads as a huge frame.
  const plaintextServer: Connector = (_url, toClient) => {
    queueMicrotask(() => toClient.onOpen());
    return {
      send: () =>
        queueMicrotask(() => {
          toClient.onBytes(encode(0, frame("ErrorReply", { code: ErrorCode.FrameTooLarge, message: "frame of 2163457 bytes exceeds the limit of 65536" })));
          toClient.onClose("the server closed the connection");
        }),
      close: () => {},
    };
  };
  await assert.rejects(connect(w, { connector: plaintextServer }), (e: unknown) => {
    assert.ok(e instanceof ClientError && e.detail.kind === "Encryption", String(e));
    assert.equal(e.detail.error.detail.kind, "PlaintextAnswer");
    assert.match(e.message, /--insecure-plaintext/);
    assert.match(e.message, /insecurePlaintext: true/);
    return true;
  });
});

test("a tampered record closes the connection and delivers nothing of it", async () => {
  const w = world();
  const alice = await connect(w);
  await alice.register("alice", "password1");
  await connect(w).then((b) => b.register("bob", "password1"));
  const disconnected = new Promise<void>((resolve) => alice.on("disconnected", () => resolve()));
  w.front.tamperNext = true;
  await assert.rejects(alice.lookupUser("bob"), (e: unknown) => e instanceof ClientError && e.detail.kind === "Disconnected");
  await disconnected;
  assert.equal(alice.isConnected, false);
  await settle();
});

test("bad or contradictory encryption settings are refused before connecting", async () => {
  const w = world();
  await assert.rejects(connect(w, { serverKey: "abc" }), /the serverKey option must be 64 hex digits, got 3 characters/);
  await assert.rejects(connect(w, { serverKey: "zz".repeat(32) }), /not hexadecimal/);
  await assert.rejects(connect(w, { serverKey: w.front.publicKey, insecurePlaintext: true }), /contradicts/);
  await assert.rejects(connect(w, { serverKey: w.front.publicKey, trustOnFirstUse: true }), /drop it/);
  assert.deepEqual(w.front.patterns, []);
});
