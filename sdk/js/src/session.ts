/**
 * The client side of a connection as a sans-IO state machine: handshake, authentication,
 * request ids, reply matching, heartbeat, close. A port of protocol/src/session.rs; the two
 * must behave the same (its unit tests are ported in test/session.test.ts).
 *
 * A {@link Session} never touches a socket and never reads a clock. Its driver feeds it what
 * arrived and the time (milliseconds on any monotonic clock the driver picks), and acts on
 * what it asks for:
 *
 * | driver -> session                    | session -> driver                              |
 * |--------------------------------------|------------------------------------------------|
 * | handleInput(bytes, now)              | pollTransmit(): bytes to write                 |
 * | handleTimeout(now)                   | pollTimeout(): when to call handleTimeout next |
 * | handleTransportClosed()              | pollEvent(): replies, pushes, state changes    |
 * | sendRequest(frame) -> request id     |                                                |
 * | cancel(request id), close()          |                                                |
 *
 * ```text
 *   new Session(config, now): HELLO queued
 *         |
 *         v
 *  +--------------+  WELCOME, version 1   +-------------+   AUTH_OK    +---------------+
 *  | AwaitWelcome | --------------------> |  Welcomed   | -----------> | Authenticated |
 *  +--------------+  "welcomed" event;    +-------------+ "authenti-   +---------------+
 *         |          heartbeat starts        |   ^         cated"              |
 *         |                                  +---+                             |
 *         |                ERROR_REPLY to REGISTER / LOGIN / RESUME:           |
 *         |                "reply" event; the connection stays open            |
 *         v                                  v                                 v
 *  +------------------------------------------------------------------------------+
 *  | Closed: "closed" event with a reason, once, last. From any state on:         |
 *  |   ERROR_REPLY with request id 0 (the server's reason)              Server    |
 *  |   ERROR_REPLY to HELLO                                     HandshakeRefused  |
 *  |   WELCOME of another version                                VersionMismatch |
 *  |   REDIRECT (after the "redirect" event)                         Redirected   |
 *  |   bytes that do not decode                                      Malformed    |
 *  |   a frame a server must not send                           UnexpectedFrame  |
 *  |   three heartbeat intervals with nothing received               TimedOut     |
 *  |   handleTransportClosed()                                  TransportClosed  |
 *  |   close()                                                          Local     |
 *  +------------------------------------------------------------------------------+
 * ```
 *
 * Request ids count up from 1, wrap past 2^32-1 to 1 and skip ids still outstanding
 * (PROTOCOL.md section 4). Every request but TYPING is outstanding until its one response
 * arrives, even after `cancel`: a cancelled request keeps its id, so a late reply is never
 * taken for the answer to a newer request. At most `maxOutstanding` requests are outstanding;
 * the session's own PINGs are never refused at the bound.
 *
 * Heartbeat (PROTOCOL.md 5.3): after WELCOME the session sends PING every `heartbeatSecs` on
 * schedule, whatever else is sent, and closes with `TimedOut` when nothing at all arrived for
 * three intervals.
 *
 * Transport seam: the session consumes and produces a plain byte stream. An encrypted
 * transport (Noise, protocol/NOISE.md) sits between the socket and `handleInput` /
 * `pollTransmit`; the session does not change.
 */

import {
  DEFAULT_MAX_FRAME_LEN,
  Decoder,
  encodeInto,
  LEN_BYTES,
  MAX_FRAME_LEN,
  VERSION,
} from "./codec.js";
import { DecodeError, errorCodeName, type ErrorCode } from "./errors.js";
import { frameCode, type AuthOk, type Frame, type FrameName, type Welcome } from "./frames.js";
import { Writer } from "./wire.js";

/** The default bound on outstanding requests. */
export const DEFAULT_MAX_OUTSTANDING = 1024;

/** Intervals of silence after which the server counts as dead. */
const DEAD_AFTER_HEARTBEATS = 3;

/** How a session introduces itself and what it accepts. */
export interface SessionConfig {
  /** Sent in HELLO so server logs can tell clients apart, e.g. "courier-web/0.1.0". */
  clientName: string;
  /** The largest frame accepted from the server; clamped to 1 MiB. */
  maxFrameLen?: number;
  /** Requests that may wait for replies at once; one more is refused. */
  maxOutstanding?: number;
}

/** Where the session is in its life. */
export type SessionState = "AwaitWelcome" | "Welcomed" | "Authenticated" | "Closed";

/** Why a session closed. */
export type CloseReason =
  | { kind: "Server"; code: number; message: string }
  | { kind: "HandshakeRefused"; code: number; message: string }
  | { kind: "VersionMismatch"; server: number }
  | { kind: "Redirected" }
  | { kind: "TimedOut"; silentForMs: number }
  | { kind: "Malformed"; error: DecodeError }
  | { kind: "UnexpectedFrame"; name: FrameName; requestId: number }
  | { kind: "TransportClosed" }
  | { kind: "Local" };

/** A sentence for a close reason, as the Rust crate words it. */
export function describeClose(reason: CloseReason): string {
  switch (reason.kind) {
    case "Server":
      return `the server closed the connection: code ${reason.code}: ${reason.message}`;
    case "HandshakeRefused":
      return `the server refused the handshake: code ${reason.code}: ${reason.message}`;
    case "VersionMismatch":
      return `the server speaks protocol version ${reason.server}, this client speaks ${VERSION}`;
    case "Redirected":
      return "the server redirected this user to another node";
    case "TimedOut":
      return `the server sent nothing for ${reason.silentForMs} ms; it is presumed dead`;
    case "Malformed":
      return `the server's bytes did not decode: ${reason.error.message}`;
    case "UnexpectedFrame":
      return `the server sent ${reason.name} with request id ${reason.requestId}, which the protocol does not allow`;
    case "TransportClosed":
      return "the connection was closed";
    case "Local":
      return "closed by this side";
  }
}

/** The server's error code of a close, when it gave one this library knows. */
export function closeCode(reason: CloseReason): ErrorCode | undefined {
  if (reason.kind === "Server" || reason.kind === "HandshakeRefused") {
    return errorCodeName(reason.code) === undefined ? undefined : (reason.code as ErrorCode);
  }
  return undefined;
}

/** What the session tells its driver, in the order things happened. */
export type SessionEvent =
  /** The handshake is done; requests may follow. Heartbeats start now. */
  | { kind: "welcomed"; welcome: Welcome }
  /** AUTH_OK answered the REGISTER, LOGIN or RESUME sent as `requestId`. */
  | { kind: "authenticated"; requestId: number; auth: AuthOk }
  /** The one response to `requestId`, ERROR_REPLY included. */
  | { kind: "reply"; requestId: number; frame: Frame }
  /** A push (MESSAGE_PUSH, RECEIPT_PUSH, PRESENCE_PUSH, TYPING_PUSH), in arrival order. */
  | { kind: "push"; frame: Frame }
  /**
   * The user lives on another node; a "closed" event with reason Redirected follows. `key`:
   * the node's static key (32 bytes, empty on a plaintext cluster), for a client that speaks
   * the encrypted transport to pin there.
   */
  | { kind: "redirect"; node: string; addr: string; key: Uint8Array }
  /** The session is over; the last event. Close the transport. */
  | { kind: "closed"; reason: CloseReason };

/** What a caller can get wrong when sending. */
export type SessionErrorKind =
  | { kind: "Closed" }
  | { kind: "TooManyOutstanding"; limit: number }
  | { kind: "NotARequest"; name: string }
  | { kind: "HelloIsAutomatic" }
  | { kind: "FrameTooLarge"; name: string; len: number; max: number };

function describeSessionError(e: SessionErrorKind): string {
  switch (e.kind) {
    case "Closed":
      return "the session is closed; open a new connection with a new session";
    case "TooManyOutstanding":
      return `${e.limit} requests are already waiting for replies; wait for replies before sending more, or raise maxOutstanding`;
    case "NotARequest":
      return `${e.name} is not a request (client frames have codes 0x01 to 0x7f)`;
    case "HelloIsAutomatic":
      return "the session sends HELLO itself when it is created; send only what follows it";
    case "FrameTooLarge":
      return `${e.name} is ${e.len} bytes, over the server's frame limit of ${e.max}; split it (media goes in chunks) or shorten it`;
  }
}

/** A request the session refused to send. */
export class SessionError extends Error {
  readonly detail: SessionErrorKind;
  constructor(detail: SessionErrorKind) {
    super(describeSessionError(detail));
    this.name = "SessionError";
    this.detail = detail;
  }
}

/** What an outstanding request id is waiting for. */
const enum Pending {
  Hello,
  /** REGISTER, LOGIN or RESUME. */
  Auth,
  /** The session's own heartbeat; its PONG is consumed. */
  Ping,
  /** A caller's request; its reply becomes a "reply" event. */
  Request,
  /** A caller gave up on it; the reply is dropped when it comes. */
  Cancelled,
}

interface Heartbeat {
  everyMs: number;
  nextPing: number;
}

/** One client connection's protocol state. See the module docs. */
export class Session {
  private readonly maxOutstanding: number;
  private readonly decoder: Decoder;
  private stateNow: SessionState = "AwaitWelcome";
  private welcomeFrame: Welcome | undefined;
  /** Encoded frames not yet taken by pollTransmit. */
  private outbox = new Writer(256);
  private readonly events: SessionEvent[] = [];
  private outstandingIds = new Map<number, Pending>();
  /** The next request id to try; never 0. */
  private nextId = 1;
  private heartbeat: Heartbeat | undefined;
  /** When bytes last arrived (or the session started). */
  private lastInput: number;
  private pingNonce = 0n;

  /** A session on a transport that just connected; HELLO is queued for pollTransmit. */
  constructor(config: SessionConfig, now: number) {
    this.maxOutstanding = config.maxOutstanding ?? DEFAULT_MAX_OUTSTANDING;
    this.decoder = new Decoder(config.maxFrameLen ?? MAX_FRAME_LEN);
    this.lastInput = now;
    this.queue({ type: "Hello", version: VERSION, client: config.clientName }, Pending.Hello);
  }

  get state(): SessionState {
    return this.stateNow;
  }

  isClosed(): boolean {
    return this.stateNow === "Closed";
  }

  /** The server's WELCOME, once it arrived. */
  get welcome(): Welcome | undefined {
    return this.welcomeFrame;
  }

  /** The largest frame the server accepts: WELCOME.maxFrame, or the default before it. */
  maxSendFrame(): number {
    const w = this.welcomeFrame;
    return w !== undefined && w.maxFrame > 0 ? Math.min(w.maxFrame, MAX_FRAME_LEN) : DEFAULT_MAX_FRAME_LEN;
  }

  /** Requests waiting for a reply, cancelled ones and the session's own PINGs included. */
  get outstanding(): number {
    return this.outstandingIds.size;
  }

  /**
   * Encodes a request for pollTransmit and returns its request id. Its response comes out as
   * a "reply" event ("authenticated" for AUTH_OK). TYPING gets no response and holds no id.
   * Throws {@link SessionError}.
   */
  sendRequest(frame: Frame): number {
    if (this.stateNow === "Closed") throw new SessionError({ kind: "Closed" });
    if (frameCode(frame.type) >= 0x80) {
      throw new SessionError({ kind: "NotARequest", name: frame.type });
    }
    let pending: Pending | undefined;
    switch (frame.type) {
      case "Hello":
        throw new SessionError({ kind: "HelloIsAutomatic" });
      case "Register":
      case "Login":
      case "Resume":
        pending = Pending.Auth;
        break;
      case "Typing":
        pending = undefined;
        break;
      default:
        pending = Pending.Request;
    }
    // Encoded in place with id 0, then checked: a refused frame is cut off again and no state
    // moves (an out-of-range field throws EncodeError from here, also before any state moves).
    const start = this.outbox.length;
    let len: number;
    try {
      len = encodeInto(this.outbox, 0, frame) - LEN_BYTES;
    } catch (e) {
      this.outbox.truncate(start);
      throw e;
    }
    const max = this.maxSendFrame();
    if (len > max) {
      this.outbox.truncate(start);
      throw new SessionError({ kind: "FrameTooLarge", name: frame.type, len, max });
    }
    if (pending !== undefined && this.outstandingIds.size >= this.maxOutstanding) {
      this.outbox.truncate(start);
      throw new SessionError({ kind: "TooManyOutstanding", limit: this.maxOutstanding });
    }
    const id = this.allocateId();
    if (pending !== undefined) this.outstandingIds.set(id, pending);
    this.outbox.patchU32(start + LEN_BYTES + 1, id);
    return id;
  }

  /**
   * The caller stopped waiting for `requestId`. The id stays taken until the reply comes,
   * which is then dropped. False if the id was not an outstanding request of the caller's.
   */
  cancel(requestId: number): boolean {
    const p = this.outstandingIds.get(requestId);
    if (p === Pending.Request || p === Pending.Auth) {
      this.outstandingIds.set(requestId, Pending.Cancelled);
      return true;
    }
    return false;
  }

  /** Every encoded frame not yet taken, in order (empty when there is nothing). */
  pollTransmit(): Uint8Array {
    return this.outbox.take();
  }

  /** Frees the buffers when they hold nothing, so an idle session costs little. */
  shrinkIdle(): void {
    this.decoder.shrinkIdle();
    if (this.outbox.length === 0) this.outbox = new Writer(0);
  }

  /**
   * Hands over the received bytes not yet decoded (a partial frame at most) and closes with
   * reason Local: for a driver that reads the rest of the connection itself.
   */
  takeUndecoded(): Uint8Array {
    const rest = this.decoder.takeUndecoded();
    this.close();
    return rest;
  }

  /** The next thing to act on, in order; undefined when there is nothing now. */
  pollEvent(): SessionEvent | undefined {
    return this.events.shift();
  }

  /**
   * When handleTimeout must be called next: the next PING or the moment the server counts as
   * dead. Undefined before WELCOME, without a heartbeat (heartbeatSecs 0) and once closed.
   */
  pollTimeout(): number | undefined {
    if (this.stateNow === "Closed" || this.heartbeat === undefined) return undefined;
    return Math.min(this.heartbeat.nextPing, this.deadAt(this.heartbeat));
  }

  /**
   * Sends PING when it is due; closes with TimedOut when nothing arrived for three heartbeat
   * intervals. Calling it early does nothing.
   */
  handleTimeout(now: number): void {
    const hb = this.heartbeat;
    if (this.stateNow === "Closed" || hb === undefined) return;
    if (now >= this.deadAt(hb)) {
      this.closeWith({ kind: "TimedOut", silentForMs: Math.max(0, now - this.lastInput) });
      return;
    }
    if (now >= hb.nextPing) {
      this.pingNonce += 1n;
      this.queue({ type: "Ping", nonce: this.pingNonce }, Pending.Ping);
      this.heartbeat = { everyMs: hb.everyMs, nextPing: now + hb.everyMs };
    }
  }

  /** Bytes that arrived from the server, in order, split anywhere. */
  handleInput(bytes: Uint8Array, now: number): void {
    if (this.stateNow === "Closed" || bytes.length === 0) return;
    this.lastInput = now;
    this.decoder.push(bytes);
    while (!this.isClosed()) {
      let env;
      try {
        env = this.decoder.next();
      } catch (e) {
        if (e instanceof DecodeError) {
          this.closeWith({ kind: "Malformed", error: e });
          return;
        }
        throw e;
      }
      if (env === undefined) return;
      this.onFrame(env.requestId, env.frame, now);
    }
  }

  /** The transport closed (EOF or an error); closes with TransportClosed unless closed. */
  handleTransportClosed(): void {
    this.closeWith({ kind: "TransportClosed" });
  }

  /** Closes on purpose (reason Local); frames not yet taken are dropped. */
  close(): void {
    this.closeWith({ kind: "Local" });
  }

  /** For tests: the next request id to try. */
  setNextIdForTest(id: number): void {
    this.nextId = id;
  }

  private onFrame(requestId: number, frame: Frame, now: number): void {
    const code = frameCode(frame.type);
    if (code >= 0xc0) {
      if (frame.type === "Redirect") {
        this.events.push({ kind: "redirect", node: frame.node, addr: frame.addr, key: frame.key });
        this.closeWith({ kind: "Redirected" });
      } else {
        this.events.push({ kind: "push", frame });
      }
      return;
    }
    if (code < 0x80) return this.unexpected(frame, requestId);
    if (requestId === 0) {
      if (frame.type === "ErrorReply") {
        this.closeWith({ kind: "Server", code: frame.code, message: frame.message });
      } else {
        this.unexpected(frame, 0);
      }
      return;
    }
    // A response to an id that is not outstanding (nothing was asked with it, or it was a
    // TYPING) answers nothing the caller waits for: dropped.
    const pending = this.outstandingIds.get(requestId);
    if (pending === undefined) return;
    this.outstandingIds.delete(requestId);
    if (pending === Pending.Hello) {
      if (frame.type === "Welcome") return this.onWelcome(frame, now);
      if (frame.type === "ErrorReply") {
        return this.closeWith({ kind: "HandshakeRefused", code: frame.code, message: frame.message });
      }
      return this.unexpected(frame, requestId);
    }
    if (frame.type === "Welcome") return this.unexpected(frame, requestId);
    if (pending === Pending.Auth && frame.type === "AuthOk") {
      this.stateNow = "Authenticated";
      this.events.push({ kind: "authenticated", requestId, auth: frame });
      return;
    }
    if (pending === Pending.Auth || pending === Pending.Request) {
      this.events.push({ kind: "reply", requestId, frame });
    }
    // Ping and Cancelled: consumed.
  }

  private onWelcome(welcome: Welcome, now: number): void {
    if (welcome.version !== VERSION) {
      return this.closeWith({ kind: "VersionMismatch", server: welcome.version });
    }
    const everyMs = welcome.heartbeatSecs * 1000;
    this.heartbeat = everyMs > 0 ? { everyMs, nextPing: now + everyMs } : undefined;
    this.stateNow = "Welcomed";
    this.welcomeFrame = welcome;
    this.events.push({ kind: "welcomed", welcome });
  }

  private unexpected(frame: Frame, requestId: number): void {
    this.closeWith({ kind: "UnexpectedFrame", name: frame.type, requestId });
  }

  private closeWith(reason: CloseReason): void {
    if (this.stateNow === "Closed") return;
    this.stateNow = "Closed";
    this.outstandingIds = new Map();
    this.decoder.takeUndecoded();
    this.outbox = new Writer(0);
    this.heartbeat = undefined;
    this.events.push({ kind: "closed", reason });
  }

  private deadAt(hb: Heartbeat): number {
    return this.lastInput + hb.everyMs * DEAD_AFTER_HEARTBEATS;
  }

  /** Encodes a frame that waits for a response under a fresh id. */
  private queue(frame: Frame, pending: Pending): number {
    const id = this.allocateId();
    this.outstandingIds.set(id, pending);
    encodeInto(this.outbox, id, frame);
    return id;
  }

  /**
   * The next id from 1 up, wrapping past 2^32-1 to 1, that is not outstanding. Ends: far
   * fewer than 2^32-1 ids are ever outstanding (the bound, plus a few pings).
   */
  private allocateId(): number {
    for (;;) {
      const id = this.nextId;
      this.nextId = id === 0xffff_ffff ? 1 : id + 1;
      if (!this.outstandingIds.has(id)) return id;
    }
  }
}
