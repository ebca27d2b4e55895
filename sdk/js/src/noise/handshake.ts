/**
 * The Noise handshakes Courier uses (protocol/NOISE.md section 2), sans-IO: bytes from the
 * peer go in with {@link Handshake.read}, messages to send come out of
 * {@link Handshake.takeOutput}, and the end is an {@link Established} transport.
 *
 * ```text
 *  XX  client                                            server
 *      | len | 0x01 | e                              -->  |   message 1 (35 bytes)
 *      |  <--  len | e, ee, s, es                         |   message 2 (98 bytes)
 *      |  client checks the server's s against its pin, if any, before message 3
 *      | len | s, se                                 -->  |   message 3 (66 bytes)
 *
 *  IK  client (knows the server's s)                     server
 *      | len | 0x02 | e, es, s, ss                   -->  |   message 1 (99 bytes)
 *      |  <--  len | e, ee, se                            |   message 2 (50 bytes)
 *      |  <--  00 01 | 01   instead, if the server cannot decrypt message 1 (REJECT)
 * ```
 *
 * `len` is 2 bytes big-endian and counts the bytes after it (1..=256, checked before the body
 * is buffered). Handshake payloads are empty. Both use `25519_ChaChaPoly_BLAKE2s` and the
 * prologue `courier/1`. The responder side is here for tests and tools (a server in a test);
 * clients use the initiator.
 */

import { Decoder } from "../codec.js";
import { ChaChaPoly, TAG_LEN } from "./chachapoly.js";
import { blake2s } from "./blake2s.js";
import { hkdf2 } from "./hkdf.js";
import { generateKeypair, KEY_LEN, keyToHex, NoiseError, systemRandom, type Keypair, type RandomSource } from "./keys.js";
import { Transport, writeNonce } from "./record.js";
import { x25519 } from "./x25519.js";

export const PROLOGUE = new TextEncoder().encode("courier/1");
export const NOISE_XX = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
export const NOISE_IK = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/** Bytes of the length prefix of every handshake message and record. */
export const LEN_BYTES = 2;
/** The longest handshake message body accepted; Courier's are at most 99 bytes. */
export const MAX_HANDSHAKE_MSG_LEN = 256;
/** The server's whole answer to an IK message 1 it cannot decrypt: "your pin is not my key". */
export const REJECT_KEY_MISMATCH = 0x01;

/** Which handshake the client runs; its byte starts the client's first message. */
export type Pattern = "XX" | "IK";
const PATTERN_BYTE: Record<Pattern, number> = { XX: 0x01, IK: 0x02 };

type Token = "e" | "s" | "ee" | "es" | "se" | "ss";
/** Message i is the initiator's when i is even. IK's pre-message is the responder's s. */
const MESSAGES: Record<Pattern, Token[][]> = {
  XX: [["e"], ["e", "ee", "s", "es"], ["s", "se"]],
  IK: [["e", "es", "s", "ss"], ["e", "ee", "se"]],
};
const NAMES: Record<Pattern, string> = { XX: NOISE_XX, IK: NOISE_IK };

const EMPTY = new Uint8Array(0);

/** Noise's SymmetricState (specification section 5.2) with its CipherState inside. */
class SymmetricState {
  ck: Uint8Array;
  h: Uint8Array;
  private cipher: ChaChaPoly | undefined;
  private n = 0;
  private readonly nonce = new Uint8Array(12);

  constructor(protocolName: string) {
    const name = new TextEncoder().encode(protocolName);
    // Longer than HASHLEN (both of Courier's names are 33 bytes): hashed; else zero-padded.
    if (name.length > 32) {
      this.h = blake2s(name);
    } else {
      this.h = new Uint8Array(32);
      this.h.set(name);
    }
    this.ck = this.h.slice();
  }

  get hasKey(): boolean {
    return this.cipher !== undefined;
  }

  mixHash(data: Uint8Array): void {
    this.h = blake2s(this.h, data);
  }

  mixKey(ikm: Uint8Array): void {
    const [ck, k] = hkdf2(this.ck, ikm);
    this.ck = ck;
    this.cipher?.wipe();
    this.cipher = new ChaChaPoly(k);
    k.fill(0);
    this.n = 0;
  }

  encryptAndHash(plaintext: Uint8Array): Uint8Array {
    let out = plaintext;
    if (this.cipher !== undefined) {
      writeNonce(this.nonce, this.n++);
      out = this.cipher.seal(this.nonce, this.h, plaintext);
    }
    this.mixHash(out);
    return out;
  }

  decryptAndHash(ciphertext: Uint8Array): Uint8Array {
    let out: Uint8Array | undefined = ciphertext;
    if (this.cipher !== undefined) {
      writeNonce(this.nonce, this.n++);
      out = this.cipher.open(this.nonce, this.h, ciphertext);
      if (out === undefined) throw new NoiseError({ kind: "Handshake", why: "a handshake message failed to decrypt" });
    }
    this.mixHash(ciphertext);
    return out;
  }

  /** The two transport keys: initiator-to-responder, responder-to-initiator. */
  split(): [Uint8Array, Uint8Array] {
    const keys = hkdf2(this.ck, EMPTY);
    this.cipher?.wipe();
    this.ck.fill(0);
    return keys;
  }
}

/** The result of a finished handshake. */
export interface Established {
  /** The records from now on: all that is kept per connection. */
  transport: Transport;
  /** The peer's static key: the server's (as pinned or learned) or, on a server, the client's. */
  remoteStatic: Uint8Array;
  pattern: Pattern;
  /** The Noise handshake hash: unique to this connection, for channel binding. */
  handshakeHash: Uint8Array;
  /** Bytes that came after the last handshake message: the first records. */
  rest: Uint8Array;
}

export interface InitiatorOptions {
  /** "IK" needs `pinned`; "XX" checks `pinned` if given, else learns the key. */
  pattern: Pattern;
  /** The client's static key; Courier identifies users by LOGIN, so a fresh one is fine. */
  local: Keypair;
  /** The server's key, 32 bytes. */
  pinned?: Uint8Array | undefined;
  /** Draws the ephemeral key. Tests pass a fixed one to reproduce the vectors. */
  random?: RandomSource;
}

export interface ResponderOptions {
  local: Keypair;
  random?: RandomSource;
}

/**
 * One side of a handshake in progress. After {@link read} throws, send what
 * {@link takeOutput} holds (a REJECT, perhaps) and close.
 */
export class Handshake {
  private pattern: Pattern | undefined;
  private state: SymmetricState | undefined;
  private e: Keypair | undefined;
  private re: Uint8Array | undefined;
  private rs: Uint8Array | undefined;
  /** The index of the next message in the pattern. */
  private step = 0;
  private input: Uint8Array = EMPTY;
  private output: Uint8Array[] = [];
  private done = false;

  private constructor(
    private readonly initiator: boolean,
    private readonly local: Keypair,
    private readonly pinned: Uint8Array | undefined,
    private readonly random: RandomSource,
  ) {}

  /** A client; message 1 is ready in {@link takeOutput} at once. */
  static initiator(opts: InitiatorOptions): Handshake {
    if (opts.pattern === "IK" && opts.pinned === undefined) {
      throw new RangeError("an IK handshake needs the server's key pinned");
    }
    if (opts.pinned !== undefined && opts.pinned.length !== KEY_LEN) {
      throw new RangeError("a pinned server key is 32 bytes");
    }
    const hs = new Handshake(true, opts.local, opts.pinned?.slice(), opts.random ?? systemRandom);
    hs.begin(opts.pattern);
    if (opts.pattern === "IK") hs.rs = opts.pinned!.slice();
    const body = hs.writeMessage();
    const msg = new Uint8Array(1 + body.length);
    msg[0] = PATTERN_BYTE[opts.pattern];
    msg.set(body, 1);
    hs.queue(msg);
    return hs;
  }

  /** A server; it learns the pattern from the client's first message. */
  static responder(opts: ResponderOptions): Handshake {
    return new Handshake(false, opts.local, undefined, opts.random ?? systemRandom);
  }

  /** The next bytes to send (length prefixes included), or undefined. */
  takeOutput(): Uint8Array | undefined {
    if (this.output.length === 0) return undefined;
    const total = this.output.reduce((n, m) => n + m.length, 0);
    const out = new Uint8Array(total);
    let at = 0;
    for (const m of this.output) {
      out.set(m, at);
      at += m.length;
    }
    this.output = [];
    return out;
  }

  /**
   * Bytes from the peer, split anywhere. Returns the {@link Established} transport when the
   * handshake is over (then send what {@link takeOutput} holds first), undefined while more
   * bytes are needed. Throws {@link NoiseError}.
   */
  read(bytes: Uint8Array): Established | undefined {
    if (this.done) throw new Error("the handshake is already over; use the Transport it returned");
    this.input = concat(this.input, bytes);
    for (;;) {
      const body = this.nextMessage();
      if (body === undefined) return undefined;
      if (this.initiator ? this.initiatorRead(body) : this.responderRead(body)) {
        this.done = true;
        return this.establish();
      }
    }
  }

  /** Takes one whole message body off the input, checking its length from the prefix first. */
  private nextMessage(): Uint8Array | undefined {
    const input = this.input;
    if (input.length < LEN_BYTES) return undefined;
    const len = (input[0]! << 8) | input[1]!;
    if (len === 0) {
      if (!this.initiator) throw new NoiseError({ kind: "PlaintextPeer" });
      // A Courier frame's 4-byte length starts 00 00: the server answered in plaintext.
      const answer = plaintextAnswer(input);
      if (answer === undefined) return undefined;
      throw answer;
    }
    if (len > MAX_HANDSHAKE_MSG_LEN) {
      throw new NoiseError({ kind: "HandshakeMsgLen", len, max: MAX_HANDSHAKE_MSG_LEN });
    }
    if (input.length < LEN_BYTES + len) return undefined;
    this.input = input.slice(LEN_BYTES + len);
    return input.subarray(LEN_BYTES, LEN_BYTES + len);
  }

  private begin(pattern: Pattern): void {
    this.pattern = pattern;
    this.state = new SymmetricState(NAMES[pattern]);
    this.state.mixHash(PROLOGUE);
    if (pattern === "IK") {
      // The pre-message: the responder's static key, known to both.
      this.state.mixHash(this.initiator ? this.pinned! : this.local.publicKey);
    }
  }

  /** Reads message 2 (and checks the pin), writes message 3 for XX. True when done. */
  private initiatorRead(body: Uint8Array): boolean {
    if (this.pattern === "IK" && body.length === 1 && body[0] === REJECT_KEY_MISMATCH) {
      throw new NoiseError({ kind: "ServerKeyMismatch", pinned: keyToHex(this.pinned!), presented: undefined });
    }
    this.readMessage(body);
    const presented = this.rs!;
    if (this.pinned !== undefined && !sameKey(presented, this.pinned)) {
      // Before message 3: an impostor never sees this client's static key.
      throw new NoiseError({ kind: "ServerKeyMismatch", pinned: keyToHex(this.pinned), presented: keyToHex(presented) });
    }
    if (this.step < MESSAGES[this.pattern!].length) this.queue(this.writeMessage());
    return this.step === MESSAGES[this.pattern!].length;
  }

  /** Reads message 1 (answering it) or XX message 3. True when done. */
  private responderRead(body: Uint8Array): boolean {
    if (this.state === undefined) {
      const pattern = body[0] === 0x01 ? "XX" : body[0] === 0x02 ? "IK" : undefined;
      if (pattern === undefined) throw new NoiseError({ kind: "UnknownPattern", byte: body[0]! });
      this.begin(pattern);
      try {
        this.readMessage(body.subarray(1));
      } catch (e) {
        if (pattern === "IK" && e instanceof NoiseError && e.detail.kind === "Handshake") {
          this.queue(new Uint8Array([REJECT_KEY_MISMATCH]));
          throw new NoiseError({ kind: "ClientPinnedOtherKey" });
        }
        throw e;
      }
      this.queue(this.writeMessage());
    } else {
      this.readMessage(body);
    }
    return this.step === MESSAGES[this.pattern!].length;
  }

  private writeMessage(): Uint8Array {
    const st = this.state!;
    const parts: Uint8Array[] = [];
    for (const token of MESSAGES[this.pattern!][this.step]!) {
      switch (token) {
        case "e":
          this.e = generateKeypair(this.random);
          parts.push(this.e.publicKey);
          st.mixHash(this.e.publicKey);
          break;
        case "s":
          parts.push(st.encryptAndHash(this.local.publicKey));
          break;
        default:
          st.mixKey(this.dh(token));
      }
    }
    parts.push(st.encryptAndHash(EMPTY));
    this.step++;
    return concat(...parts);
  }

  private readMessage(body: Uint8Array): void {
    const st = this.state!;
    let at = 0;
    const take = (n: number): Uint8Array => {
      if (body.length - at < n) {
        throw new NoiseError({ kind: "Handshake", why: `message ${this.step + 1} is too short` });
      }
      at += n;
      return body.subarray(at - n, at);
    };
    for (const token of MESSAGES[this.pattern!][this.step]!) {
      switch (token) {
        case "e":
          this.re = take(KEY_LEN).slice();
          st.mixHash(this.re);
          break;
        case "s":
          this.rs = st.decryptAndHash(take(st.hasKey ? KEY_LEN + TAG_LEN : KEY_LEN)).slice();
          break;
        default:
          st.mixKey(this.dh(token));
      }
    }
    // The payload (empty from Courier's peers; whatever it holds is authenticated and unused).
    if (st.hasKey && body.length - at < TAG_LEN) {
      throw new NoiseError({ kind: "Handshake", why: `message ${this.step + 1} is too short` });
    }
    st.decryptAndHash(body.subarray(at));
    this.step++;
  }

  private dh(token: Exclude<Token, "e" | "s">): Uint8Array {
    const e = this.e!, s = this.local;
    switch (token) {
      case "ee":
        return x25519(e.privateKey, this.re!);
      case "ss":
        return x25519(s.privateKey, this.rs!);
      // "es" is the initiator's e with the responder's s; "se" the other way round.
      case "es":
        return this.initiator ? x25519(e.privateKey, this.rs!) : x25519(s.privateKey, this.re!);
      case "se":
        return this.initiator ? x25519(s.privateKey, this.re!) : x25519(e.privateKey, this.rs!);
    }
  }

  private queue(body: Uint8Array): void {
    const msg = new Uint8Array(LEN_BYTES + body.length);
    msg[0] = body.length >>> 8;
    msg[1] = body.length & 0xff;
    msg.set(body, LEN_BYTES);
    this.output.push(msg);
  }

  private establish(): Established {
    const st = this.state!;
    const [i2r, r2i] = st.split();
    const transport = this.initiator ? new Transport(i2r, r2i) : new Transport(r2i, i2r);
    i2r.fill(0);
    r2i.fill(0);
    this.e?.privateKey.fill(0);
    const rest = this.input;
    this.input = EMPTY;
    return { transport, remoteStatic: this.rs!, pattern: this.pattern!, handshakeHash: st.h, rest };
  }
}

function sameKey(a: Uint8Array, b: Uint8Array): boolean {
  let diff = 0;
  for (let i = 0; i < KEY_LEN; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * A plaintext Courier frame where a handshake message should be (NOISE.md section 2): the
 * server's refusal (full, shutting down) or a --insecure-plaintext server's FRAME_TOO_LARGE.
 * Undefined while the frame is not all there.
 */
function plaintextAnswer(input: Uint8Array): NoiseError | undefined {
  const decoder = new Decoder();
  decoder.push(input);
  let env;
  try {
    env = decoder.next();
  } catch (e) {
    return new NoiseError({ kind: "Handshake", why: `the server's plaintext answer is malformed: ${e instanceof Error ? e.message : String(e)}` });
  }
  if (env === undefined) return undefined;
  if (env.frame.type === "ErrorReply") {
    return new NoiseError({ kind: "PlaintextAnswer", code: env.frame.code, message: env.frame.message });
  }
  return new NoiseError({ kind: "PlaintextFrame", frame: env.frame.type });
}
