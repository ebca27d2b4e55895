/**
 * One transport driven by a {@link Session} (client/src/connection.rs): callers send requests
 * and await their reply; what arrives is fed to the session and its events routed (replies to
 * the waiting callers, pushes, the redirect and the close to the {@link Sink}); one timer
 * follows the session's `pollTimeout` for the heartbeat.
 *
 * JavaScript runs one callback at a time, so there are no locks: every transport callback
 * and timer runs the session, routes its events and writes what it queued, start to end.
 */

import { ClientError } from "./client_error.js";
import type { Clock } from "./clock.js";
import { VERSION } from "./codec.js";
import { isKnownErrorCode, type ErrorCode } from "./errors.js";
import type { Frame, Welcome } from "./frames.js";
import { NoiseError } from "./noise/keys.js";
import { Session, SessionError, type CloseReason } from "./session.js";
import type { Connector, Transport } from "./transport.js";

/** Where a connection hands what is not a reply to one of its requests, in arrival order. */
export interface Sink {
  onPush(conn: Connection, frame: Frame): void;
  /** The server sent this user to `addr`; the close follows. */
  onRedirect(conn: Connection, node: string, addr: string): void;
  /** The connection is closed; called once, last. */
  onClose(conn: Connection): void;
}

export interface ConnectionOptions {
  connector: Connector;
  clock: Clock;
  clientName: string;
  maxFrameLen: number;
  maxOutstanding: number;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
}

interface Waiter {
  request: string;
  resolve: (frame: Frame) => void;
  reject: (e: ClientError) => void;
  cancelTimer: () => void;
}

/** A live connection after the HELLO/WELCOME handshake. */
export class Connection {
  private readonly session: Session;
  private transport: Transport | undefined;
  private readonly waiters = new Map<number, Waiter>();
  private handshake: { resolve: () => void; reject: (e: ClientError) => void } | undefined;
  private cancelHandshakeTimer: (() => void) | undefined;
  private cancelHeartbeat: (() => void) | undefined;
  private heartbeatAt: number | undefined;
  private closedNow = false;
  private closedLocallyNow = false;
  private reasonCode: ErrorCode | undefined;
  private redirectTo: { node: string; addr: string } | undefined;
  private sinkNotified = false;

  private constructor(
    readonly url: string,
    private readonly opts: ConnectionOptions,
    private readonly sink: Sink,
  ) {
    this.session = new Session(
      {
        clientName: opts.clientName,
        maxFrameLen: opts.maxFrameLen,
        maxOutstanding: opts.maxOutstanding,
      },
      opts.clock.now(),
    );
  }

  /**
   * Opens a transport to `url`, says HELLO once it is open and resolves on WELCOME. Rejects
   * with Unreachable (no transport), Timeout, the server's refusal, or VersionMismatch.
   */
  static open(url: string, opts: ConnectionOptions, sink: Sink): Promise<Connection> {
    const conn = new Connection(url, opts, sink);
    return new Promise<Connection>((resolve, reject) => {
      conn.handshake = { resolve: () => resolve(conn), reject };
      conn.cancelHandshakeTimer = opts.clock.setTimer(() => {
        conn.failHandshake(
          new ClientError({ kind: "Unreachable", url, why: `no connection within ${opts.connectTimeoutMs} ms` }),
        );
      }, opts.connectTimeoutMs);
      let opened = false;
      try {
        const transport = opts.connector(url, {
          onOpen: () => {
            opened = true;
            conn.cancelHandshakeTimer?.();
            conn.cancelHandshakeTimer = opts.clock.setTimer(() => {
              conn.failHandshake(new ClientError({ kind: "Timeout", request: "Hello", afterMs: opts.requestTimeoutMs }));
            }, opts.requestTimeoutMs);
            conn.flush();
          },
          onBytes: (bytes) => conn.onBytes(bytes),
          onClose: (why, error) => {
            if (!opened && conn.handshake !== undefined) {
              conn.failHandshake(
                error instanceof NoiseError
                  ? new ClientError({ kind: "Encryption", url, error })
                  : new ClientError({ kind: "Unreachable", url, why }),
              );
              return;
            }
            conn.transport = undefined;
            conn.session.handleTransportClosed();
            conn.route();
          },
        });
        // A transport may report onOpen before the connector returns (a wrapper, a test
        // double): HELLO waited in the session until the transport was known.
        if (!conn.closedNow) {
          conn.transport = transport;
          if (opened) conn.flush();
        }
      } catch (e) {
        conn.failHandshake(
          new ClientError({ kind: "Unreachable", url, why: e instanceof Error ? e.message : String(e) }),
        );
      }
    });
  }

  /** The server's WELCOME. */
  get welcome(): Welcome {
    return this.session.welcome!;
  }

  /** The largest frame the server accepts. */
  maxFrame(): number {
    return this.session.maxSendFrame();
  }

  get closed(): boolean {
    return this.closedNow;
  }

  /** Whether this side closed the connection on purpose. */
  get closedLocally(): boolean {
    return this.closedLocallyNow;
  }

  /** The code the server gave when it closed, if any. */
  get closeReason(): ErrorCode | undefined {
    return this.reasonCode;
  }

  /** The REDIRECT the server sent on this connection. */
  get redirect(): { node: string; addr: string } | undefined {
    return this.redirectTo;
  }

  /** Requests waiting for a reply on this connection (the session's count). */
  get outstanding(): number {
    return this.session.outstanding;
  }

  /**
   * Sends a request and resolves with the reply that has its request id. ERROR_REPLY rejects
   * with a Server error; a close rejects with Disconnected; no reply in time with Timeout.
   */
  request(frame: Frame, timeoutMs = this.opts.requestTimeoutMs): Promise<Frame> {
    return new Promise<Frame>((resolve, reject) => {
      const id = this.send(frame, reject);
      if (id === undefined) return;
      const cancelTimer = this.opts.clock.setTimer(() => {
        this.waiters.delete(id);
        // The id stays taken until the late reply comes, which the session drops.
        this.session.cancel(id);
        reject(new ClientError({ kind: "Timeout", request: frame.type, afterMs: timeoutMs }));
      }, timeoutMs);
      this.waiters.set(id, { request: frame.type, resolve, reject, cancelTimer });
      this.flush();
    });
  }

  /** Sends a frame that gets no reply (TYPING). Throws ClientError. */
  sendOnly(frame: Frame): void {
    let error: ClientError | undefined;
    this.send(frame, (e) => (error = e));
    if (error !== undefined) throw error;
    this.flush();
  }

  private send(frame: Frame, reject: (e: ClientError) => void): number | undefined {
    if (this.closedNow) {
      reject(new ClientError({ kind: "Disconnected", reason: this.reasonCode }));
      return undefined;
    }
    try {
      return this.session.sendRequest(frame);
    } catch (e) {
      if (e instanceof SessionError) {
        reject(
          e.detail.kind === "Closed"
            ? new ClientError({ kind: "Disconnected", reason: this.reasonCode })
            : new ClientError({ kind: "Session", error: e }),
        );
        return undefined;
      }
      throw e;
    }
  }

  /** Closes on purpose: no reconnect follows. */
  close(): void {
    this.closedLocallyNow = true;
    this.session.close();
    this.route();
  }

  /** Drops the transport as a network failure would (tests of reconnect). */
  breakForTest(): void {
    this.transport?.close();
    this.transport = undefined;
    this.session.handleTransportClosed();
    this.route();
  }

  private onBytes(bytes: Uint8Array): void {
    this.session.handleInput(bytes, this.opts.clock.now());
    this.route();
  }

  /** Writes what the session queued, then re-arms the heartbeat timer. */
  private flush(): void {
    // Without a transport (not yet known, or gone) the bytes stay queued in the session.
    if (this.transport === undefined) return;
    const out = this.session.pollTransmit();
    if (out.length > 0) {
      try {
        this.transport.send(out);
      } catch {
        // A transport that cannot write is gone; its close may never come.
        this.transport = undefined;
        this.session.handleTransportClosed();
        this.route();
        return;
      }
    }
    this.armHeartbeat();
  }

  private armHeartbeat(): void {
    const at = this.session.pollTimeout();
    if (at === this.heartbeatAt) return;
    this.cancelHeartbeat?.();
    this.cancelHeartbeat = undefined;
    this.heartbeatAt = at;
    if (at === undefined) return;
    this.cancelHeartbeat = this.opts.clock.setTimer(() => {
      this.cancelHeartbeat = undefined;
      this.heartbeatAt = undefined;
      this.session.handleTimeout(this.opts.clock.now());
      this.route();
    }, at - this.opts.clock.now());
  }

  private failHandshake(e: ClientError): void {
    const hs = this.handshake;
    if (hs === undefined) return;
    this.handshake = undefined;
    this.closedLocallyNow = true;
    // Never opened as far as the sink knows: no onClose for it.
    this.sinkNotified = true;
    this.session.close();
    this.route();
    hs.reject(e);
  }

  /**
   * Routes every event the session has, in order, then writes what it queued. The sink's
   * onClose comes last, after every reply and push before it.
   */
  private route(): void {
    let closedReason: CloseReason | undefined;
    for (let ev = this.session.pollEvent(); ev !== undefined; ev = this.session.pollEvent()) {
      switch (ev.kind) {
        case "welcomed": {
          this.cancelHandshakeTimer?.();
          this.cancelHandshakeTimer = undefined;
          const hs = this.handshake;
          this.handshake = undefined;
          hs?.resolve();
          break;
        }
        case "authenticated":
          this.takeWaiter(ev.requestId)?.resolve(ev.auth);
          break;
        case "reply": {
          const w = this.takeWaiter(ev.requestId);
          if (w === undefined) break;
          const f = ev.frame;
          if (f.type === "ErrorReply") {
            w.reject(new ClientError({ kind: "Server", code: f.code, message: f.message }));
          } else {
            w.resolve(f);
          }
          break;
        }
        case "push":
          this.sink.onPush(this, ev.frame);
          break;
        case "redirect":
          this.redirectTo = { node: ev.node, addr: ev.addr };
          this.sink.onRedirect(this, ev.node, ev.addr);
          break;
        case "closed":
          closedReason = ev.reason;
          break;
      }
    }
    if (closedReason === undefined) {
      this.flush();
      return;
    }
    this.onClosed(closedReason);
  }

  private takeWaiter(id: number): Waiter | undefined {
    const w = this.waiters.get(id);
    if (w !== undefined) {
      this.waiters.delete(id);
      w.cancelTimer();
    }
    return w;
  }

  private onClosed(reason: CloseReason): void {
    if (reason.kind === "Server" && isKnownErrorCode(reason.code)) {
      this.reasonCode = reason.code;
    }
    this.closedNow = true;
    this.cancelHeartbeat?.();
    this.cancelHeartbeat = undefined;
    this.cancelHandshakeTimer?.();
    this.cancelHandshakeTimer = undefined;
    const transport = this.transport;
    this.transport = undefined;
    transport?.close();
    const hs = this.handshake;
    this.handshake = undefined;
    hs?.reject(handshakeError(reason, this.reasonCode));
    const waiters = [...this.waiters.values()];
    this.waiters.clear();
    for (const w of waiters) {
      w.cancelTimer();
      w.reject(new ClientError({ kind: "Disconnected", reason: this.reasonCode }));
    }
    if (!this.sinkNotified && hs === undefined) {
      this.sinkNotified = true;
      this.sink.onClose(this);
    }
  }
}

/** What open() rejects with when the session closed before WELCOME. */
function handshakeError(reason: CloseReason, code: ErrorCode | undefined): ClientError {
  switch (reason.kind) {
    case "HandshakeRefused":
      return new ClientError({ kind: "Server", code: reason.code, message: reason.message });
    case "VersionMismatch":
      return new ClientError({ kind: "VersionMismatch", server: reason.server, client: VERSION });
    default:
      return new ClientError({ kind: "Disconnected", reason: code });
  }
}
