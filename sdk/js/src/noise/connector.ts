/**
 * The Noise transport as a {@link Connector} that wraps another (WebSocket in browsers, TCP in
 * Node): it runs the handshake on the inner transport's bytes before it reports `onOpen`,
 * then opens records into `onBytes` and seals what `send` gets. Nothing above it changes.
 *
 * ```text
 *   Session (frames)  <->  noiseConnector: handshake, then records  <->  WebSocket / TCP
 * ```
 *
 * With `serverKey` it runs IK (one round trip) and only a server holding that key gets through;
 * without, XX: it learns the key the server proves (trust on first use) and reports it through
 * `onEstablished`, so a caller can pin it. Failures close the inner transport and reach
 * `onClose` with the {@link NoiseError}, whose text says what to do.
 */

import type { Connector, Transport as ByteTransport, TransportHandlers } from "../transport.js";
import { Handshake, type Pattern } from "./handshake.js";
import { generateKeypair, keyToHex, NoiseError, parsePublicKey, systemRandom, type Keypair, type RandomSource } from "./keys.js";
import type { Transport } from "./record.js";

export interface NoiseConnectorOptions {
  /** The server's public key (64 hex digits or 32 bytes): IK, refused by any other server. */
  serverKey?: string | Uint8Array | undefined;
  /** Called when a handshake is done, before `onOpen`: the key the server proved. */
  onEstablished?: (info: NoiseInfo) => void;
  /** Random bytes for the keys; `crypto.getRandomValues` by default. */
  random?: RandomSource;
  /**
   * The client's static key. Courier identifies users by LOGIN, not by this key, so the
   * default is a fresh one per connection (as the Rust client does).
   */
  staticKey?: Keypair;
}

/** What an encrypted connection learned in its handshake. */
export interface NoiseInfo {
  /** The server's public key, 64 lowercase hex digits: pinned, or learned on first use. */
  serverKey: string;
  pattern: Pattern;
  /** Unique to the connection (for channel binding). */
  handshakeHash: Uint8Array;
}

/** Wraps `inner` in the Noise transport of protocol/NOISE.md. */
export function noiseConnector(inner: Connector, options: NoiseConnectorOptions = {}): Connector {
  const pinned =
    options.serverKey === undefined
      ? undefined
      : typeof options.serverKey === "string"
        ? parsePublicKey(options.serverKey, "the server key")
        : options.serverKey.slice();
  const random = options.random ?? systemRandom;
  return (url, handlers) => new NoiseLink(url, inner, handlers, pinned, random, options).outer;
}

class NoiseLink {
  readonly outer: ByteTransport;
  private inner: ByteTransport | undefined;
  private innerOpenedEarly = false;
  private handshake: Handshake | undefined;
  private records: Transport | undefined;
  private done = false;

  constructor(
    url: string,
    connector: Connector,
    private readonly handlers: TransportHandlers,
    private readonly pinned: Uint8Array | undefined,
    private readonly random: RandomSource,
    private readonly options: NoiseConnectorOptions,
  ) {
    this.outer = {
      send: (bytes) => {
        if (this.done || this.inner === undefined || this.records === undefined) {
          throw new Error("the encrypted transport is not open");
        }
        this.inner.send(this.records.seal(bytes));
      },
      close: () => {
        this.done = true;
        this.inner?.close();
      },
    };
    this.inner = connector(url, {
      onOpen: () => {
        if (this.inner === undefined) {
          // The inner transport opened before its connector returned: start once it has.
          this.innerOpenedEarly = true;
        } else {
          this.start();
        }
      },
      onBytes: (bytes) => this.onBytes(bytes),
      onClose: (why, error) => {
        if (this.done) return;
        this.done = true;
        const during = this.records === undefined ? " (during the encrypted handshake)" : "";
        this.handlers.onClose(`${why}${during}`, error);
      },
    });
    if (this.innerOpenedEarly && !this.done) this.start();
  }

  /** Sends message 1. */
  private start(): void {
    if (this.done) return;
    try {
      const local = this.options.staticKey ?? generateKeypair(this.random);
      this.handshake = Handshake.initiator({
        pattern: this.pinned === undefined ? "XX" : "IK",
        local,
        pinned: this.pinned,
        random: this.random,
      });
      this.inner!.send(this.handshake.takeOutput()!);
    } catch (e) {
      this.fail(e);
    }
  }

  private onBytes(bytes: Uint8Array): void {
    if (this.done) return;
    try {
      let input = bytes;
      if (this.records === undefined) {
        const hs = this.handshake;
        if (hs === undefined) throw new NoiseError({ kind: "Handshake", why: "the server spoke before the client's first message" });
        const established = hs.read(bytes);
        const reply = hs.takeOutput();
        if (reply !== undefined) this.inner!.send(reply);
        if (established === undefined) return;
        this.handshake = undefined;
        this.records = established.transport;
        this.options.onEstablished?.({
          serverKey: keyToHex(established.remoteStatic),
          pattern: established.pattern,
          handshakeHash: established.handshakeHash,
        });
        this.handlers.onOpen();
        input = established.rest;
        if (input.length === 0) return;
      }
      for (const plaintext of this.records.open(input)) {
        // A handler may close this transport while it reads.
        if (this.done) return;
        this.handlers.onBytes(plaintext);
      }
    } catch (e) {
      this.fail(e);
    }
  }

  private fail(e: unknown): void {
    if (!(e instanceof NoiseError)) throw e;
    if (this.done) return;
    this.done = true;
    this.inner?.close();
    this.handlers.onClose(e.message, e);
  }
}
