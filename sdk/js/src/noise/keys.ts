/**
 * Keys and the Noise layer's one error type (protocol/src/noise/mod.rs `Error`; the texts are
 * the Rust ones, so a person reads the same sentence from either client).
 */

import { ErrorCode } from "../errors.js";
import { x25519PublicKey, X25519_KEY_LEN } from "./x25519.js";

export const KEY_LEN = X25519_KEY_LEN;

/** Fills `out` with random bytes; the platform's `crypto.getRandomValues` by default. */
export type RandomSource = (out: Uint8Array) => void;

export const systemRandom: RandomSource = (out) => {
  const c = (globalThis as { crypto?: { getRandomValues(a: Uint8Array): Uint8Array } }).crypto;
  if (c === undefined) {
    throw new NoiseError({ kind: "Random", why: "this runtime has no crypto.getRandomValues (Node 18+ and browsers have it)" });
  }
  c.getRandomValues(out);
};

/** An X25519 key pair. */
export interface Keypair {
  readonly privateKey: Uint8Array;
  readonly publicKey: Uint8Array;
}

export function keypairFromPrivate(privateKey: Uint8Array): Keypair {
  if (privateKey.length !== KEY_LEN) throw new RangeError("an X25519 private key is 32 bytes");
  return { privateKey: privateKey.slice(), publicKey: x25519PublicKey(privateKey) };
}

export function generateKeypair(random: RandomSource = systemRandom): Keypair {
  const privateKey = new Uint8Array(KEY_LEN);
  random(privateKey);
  return keypairFromPrivate(privateKey);
}

/** 64 lowercase hex digits, the way Courier writes public keys. */
export function keyToHex(key: Uint8Array): string {
  let s = "";
  for (const b of key) s += b.toString(16).padStart(2, "0");
  return s;
}

/**
 * Reads a public key written as 64 hex digits (upper or lower case, surrounding whitespace
 * ignored); `what` names it in the error ("the serverKey option").
 */
export function parsePublicKey(text: string, what: string): Uint8Array {
  const hex = text.trim();
  if (hex.length !== 2 * KEY_LEN) {
    throw new NoiseError({ kind: "KeyLength", what, expected: 2 * KEY_LEN, got: hex.length });
  }
  if (!/^[0-9a-fA-F]*$/.test(hex)) throw new NoiseError({ kind: "KeyNotHex", what });
  const key = new Uint8Array(KEY_LEN);
  for (let i = 0; i < KEY_LEN; i++) key[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return key;
}

/** Why the encrypted transport cannot go on; every kind is fatal for the connection. */
export type NoiseErrorKind =
  /** The server does not hold the pinned key: it proved another (XX) or refused IK. */
  | { kind: "ServerKeyMismatch"; pinned: string; presented: string | undefined }
  /** (Server side) an IK message 1 made for another key; REJECT was written. */
  | { kind: "ClientPinnedOtherKey" }
  /** (Server side) the client sent a plaintext Courier frame. */
  | { kind: "PlaintextPeer" }
  /** The server answered the handshake with a plaintext ERROR_REPLY (full, or plaintext only). */
  | { kind: "PlaintextAnswer"; code: number; message: string }
  /** The server answered the handshake with a plaintext frame that is not an error. */
  | { kind: "PlaintextFrame"; frame: string }
  | { kind: "UnknownPattern"; byte: number }
  | { kind: "HandshakeMsgLen"; len: number; max: number }
  /** A handshake message failed to decrypt or is too short. */
  | { kind: "Handshake"; why: string }
  | { kind: "RecordTooLarge"; len: number; max: number }
  | { kind: "RecordTooShort"; len: number }
  | { kind: "RecordAuth" }
  | { kind: "NonceExhausted" }
  | { kind: "KeyLength"; what: string; expected: number; got: number }
  | { kind: "KeyNotHex"; what: string }
  | { kind: "Random"; why: string };


function describe(e: NoiseErrorKind): string {
  switch (e.kind) {
    case "ServerKeyMismatch":
      return (
        `the server's key is not the one pinned (pinned ${e.pinned}, ` +
        (e.presented === undefined
          ? "the server could not decrypt a handshake made for the pinned key"
          : `server presented ${e.presented}`) +
        "): either the server was re-keyed or this is not your server; do not connect. If the " +
        "operator confirms a new key (`courier keys show` on the server), pin that key instead"
      );
    case "ClientPinnedOtherKey":
      return (
        "a client's IK handshake could not be decrypted with this server's key: the client has " +
        "another key pinned (an old key of this server, or another server's); it was told so"
      );
    case "PlaintextPeer":
      return (
        "the peer sent a plaintext Courier frame where a Noise handshake was expected: this " +
        "server requires the encrypted transport; configure the client with the server's key " +
        "(or run both sides with --insecure-plaintext for local benchmarks only)"
      );
    case "PlaintextAnswer":
      return (
        `the server answered the encrypted handshake in plaintext: code ${e.code}: ${e.message}` +
        (e.code === ErrorCode.FrameTooLarge
          ? " (a server run with --insecure-plaintext answers a handshake so; connect to it " +
            "with `insecurePlaintext: true`, for local benchmarks only)"
          : "")
      );
    case "PlaintextFrame":
      return (
        `the server answered the encrypted handshake with a plaintext ${e.frame}: it runs with ` +
        "--insecure-plaintext; connect to it with `insecurePlaintext: true` (local benchmarks only)"
      );
    case "UnknownPattern":
      return `unknown handshake pattern byte 0x${e.byte.toString(16).padStart(2, "0")}: the peer speaks another protocol or version`;
    case "HandshakeMsgLen":
      return `handshake message of ${e.len} bytes is outside 1..=${e.max}: the peer is not speaking Courier's Noise handshake`;
    case "Handshake":
      return `the Noise handshake failed (${e.why}): the peer is not speaking Courier's handshake, or the bytes were altered in transit`;
    case "RecordTooLarge":
      return `encrypted record of ${e.len} bytes exceeds the limit of ${e.max}: the peer is misbehaving; close the connection`;
    case "RecordTooShort":
      return `encrypted record of ${e.len} bytes cannot hold the 16-byte tag; close the connection`;
    case "RecordAuth":
      return "encrypted record failed authentication (altered, replayed, reordered or dropped in transit); close the connection";
    case "NonceExhausted":
      return "the connection used all its record nonces; reconnect";
    case "KeyLength":
      return `${e.what} must be ${e.expected} hex digits, got ${e.got} characters`;
    case "KeyNotHex":
      return `${e.what} is not hexadecimal (digits 0-9 and a-f only)`;
    case "Random":
      return `no random number generator: ${e.why}`;
  }
}

export class NoiseError extends Error {
  readonly detail: NoiseErrorKind;

  constructor(detail: NoiseErrorKind) {
    super(describe(detail));
    this.name = "NoiseError";
    this.detail = detail;
  }
}
