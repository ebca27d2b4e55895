/** Client settings (client/src/config.rs), every one with a default. */

import { DEFAULT_BACKOFF, type BackoffPolicy } from "./backoff.js";
import { systemClock, type Clock } from "./clock.js";
import { MAX_FRAME_LEN } from "./codec.js";
import { DEFAULT_MAX_OUTSTANDING } from "./session.js";
import { defaultStorage, type TokenStorage } from "./storage.js";
import { parsePublicKey, systemRandom, type RandomSource } from "./noise/keys.js";
import { webSocketConnector, type Connector, type WebSocketConstructor } from "./transport.js";

/** Pushed messages held during a catch-up sync, by default. */
export const DEFAULT_MAX_HELD_PUSHES = 4096;
/**
 * Syncs one catch-up runs at most when held pushes were dropped: each recovers what the
 * previous one's holding dropped. Past it the rest stay above the saved watermark, for the
 * next sync (the next reconnect's, or `sync()`), and are not lost.
 */
export const MAX_CATCH_UP_ROUNDS = 8;

/** How a client connects, waits, reconnects and remembers. Every field has a default. */
export interface ClientConfig {
  /** Sent in HELLO so server logs can tell clients apart. */
  clientName?: string;
  /** The device name sent with REGISTER/LOGIN; keep it stable across runs. */
  device?: string;
  /** How long each request waits for its reply (ms). Default 10 s. */
  requestTimeoutMs?: number;
  /** How long opening the transport may take (ms). Default 5 s. */
  connectTimeoutMs?: number;
  /** Reconnect automatically (resume, then sync the gap) when the connection drops. */
  autoReconnect?: boolean;
  /** Delays between reconnect attempts. */
  backoff?: BackoffPolicy;
  /** Largest frame accepted from the server. Default 1 MiB, the protocol ceiling. */
  maxFrameLen?: number;
  /** Page size of sync(). Default 500. */
  syncPage?: number;
  /** Requests that may wait for replies at once on one connection. Default 1024. */
  maxOutstanding?: number;
  /**
   * Pushed messages held while a catch-up sync runs. Default 4096. Past it the oldest held is
   * dropped and the catch-up syncs again from its new watermark, which recovers it.
   */
  maxHeldPushes?: number;
  /**
   * The server's public key, 64 hex digits (`courier keys show` on the server prints it): the
   * connection is encrypted (Noise IK, one round trip) and refused by a server holding any
   * other key. The usual choice.
   */
  serverKey?: string;
  /**
   * Without `serverKey`: accept the key the server proves on first contact (Noise XX), then
   * pin it for the reconnects to that URL (IK). Read it from `client.serverKey`, compare it
   * with `courier keys show`, and pass it as `serverKey` from then on. This is the default
   * when neither `serverKey` nor `insecurePlaintext` is given: encrypted, never plaintext.
   */
  trustOnFirstUse?: boolean;
  /**
   * No encryption, for a server run with `--insecure-plaintext` (local benchmarks only). An
   * encrypted server refuses it with ENCRYPTION_REQUIRED.
   */
  insecurePlaintext?: boolean;
  /** Random bytes for the Noise keys; `crypto.getRandomValues` by default. */
  randomBytes?: RandomSource;
  /** The WebSocket constructor, for runtimes without a global one (Node 20). */
  WebSocket?: WebSocketConstructor;
  /**
   * The transport under the encryption; overrides `WebSocket`. Tests pass an in-memory one;
   * the Noise layer wraps it unless `insecurePlaintext` is set.
   */
  connector?: Connector;
  /** Time and timers; tests pass a manual clock. */
  clock?: Clock;
  /** Random numbers in [0, 1) for backoff jitter. */
  random?: () => number;
  /**
   * Where the token and the sync watermark are kept between runs: localStorage in browsers
   * (the default there), memory in Node unless a FileStorage is given; null keeps nothing.
   */
  storage?: TokenStorage | null;
  /** Prefix of the storage keys, so several accounts can share one storage. */
  storagePrefix?: string;
  /**
   * The URL to use for a REDIRECT's address (host:port). Default: the current URL with its
   * host replaced, which assumes the node serves WebSocket at the address it announces.
   */
  redirectUrl?: (addr: string, currentUrl: string) => string;
}

/** How each connection is made: Noise IK to a pinned key, Noise XX learning it, or plain. */
export type Encryption =
  | { kind: "pinned"; serverKey: Uint8Array }
  | { kind: "trustOnFirstUse" }
  | { kind: "plaintext" };

export type ResolvedConfig = Required<
  Omit<ClientConfig, "WebSocket" | "storage" | "serverKey" | "trustOnFirstUse" | "insecurePlaintext">
> & {
  storage: TokenStorage | null;
  encryption: Encryption;
};

/** The transport a config asks for; throws for a malformed key or a contradiction. */
export function resolveEncryption(c: ClientConfig): Encryption {
  if (c.insecurePlaintext === true) {
    if (c.serverKey !== undefined || c.trustOnFirstUse === true) {
      throw new RangeError(
        "insecurePlaintext contradicts serverKey and trustOnFirstUse: give the server's key " +
          "(encrypted), or insecurePlaintext alone for a server run with --insecure-plaintext",
      );
    }
    return { kind: "plaintext" };
  }
  if (c.serverKey !== undefined) {
    if (c.trustOnFirstUse === true) {
      throw new RangeError("trustOnFirstUse is for a server whose key you do not have; with serverKey, drop it");
    }
    return { kind: "pinned", serverKey: parsePublicKey(c.serverKey, "the serverKey option") };
  }
  return { kind: "trustOnFirstUse" };
}

export function resolveConfig(c: ClientConfig): ResolvedConfig {
  return {
    encryption: resolveEncryption(c),
    randomBytes: c.randomBytes ?? systemRandom,
    clientName: c.clientName ?? "courier-client-js/0.1.0",
    device: c.device ?? "default",
    requestTimeoutMs: c.requestTimeoutMs ?? 10_000,
    connectTimeoutMs: c.connectTimeoutMs ?? 5_000,
    autoReconnect: c.autoReconnect ?? false,
    backoff: c.backoff ?? DEFAULT_BACKOFF,
    maxFrameLen: c.maxFrameLen ?? MAX_FRAME_LEN,
    syncPage: c.syncPage ?? 500,
    maxOutstanding: c.maxOutstanding ?? DEFAULT_MAX_OUTSTANDING,
    maxHeldPushes: Math.max(1, c.maxHeldPushes ?? DEFAULT_MAX_HELD_PUSHES),
    connector: c.connector ?? webSocketConnector(c.WebSocket),
    clock: c.clock ?? systemClock,
    random: c.random ?? Math.random,
    storage: c.storage === undefined ? defaultStorage() : c.storage,
    storagePrefix: c.storagePrefix ?? "courier.",
    redirectUrl: c.redirectUrl ?? defaultRedirectUrl,
  };
}

function defaultRedirectUrl(addr: string, currentUrl: string): string {
  const u = new URL(currentUrl);
  u.host = addr;
  return u.toString();
}
