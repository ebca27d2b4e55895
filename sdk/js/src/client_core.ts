/**
 * The core of the client: one current connection, the session (token, watermark, dedupe),
 * the events, and the reconnect loop (client/src/client.rs). {@link Client} adds the typed
 * requests on top.
 *
 * With `autoReconnect`, a dropped connection is re-established with jittered exponential
 * backoff: HELLO, RESUME with the saved token, then SYNC from the saved watermark. Missed
 * messages come out as "message" events, each (thread, id) once: pushes that arrive while a
 * sync runs are held and come out after the backlog, deduplicated.
 */

import { Backoff } from "./backoff.js";
import { ClientError, isConnectionError } from "./client_error.js";
import { sleep } from "./clock.js";
import { MAX_CATCH_UP_ROUNDS, type ResolvedConfig } from "./config.js";
import { Connection, type ConnectionOptions, type Sink } from "./connection.js";
import { Dedupe } from "./dedupe.js";
import { Emitter } from "./emitter.js";
import { noiseConnector } from "./noise/connector.js";
import { ErrorCode } from "./errors.js";
import type { ClientEvents } from "./events.js";
import {
  frame,
  type AuthOk,
  type Frame,
  type FrameName,
  type FrameOf,
  type Message,
  type MessageMeta,
  type Welcome,
} from "./frames.js";
import { forgetSession, loadSession, saveToken, saveWatermark } from "./storage.js";
import { expectFrame, syncPages, type SyncResult } from "./sync.js";

/** Redirects followed in a row before giving up: a loop between nodes is a server bug. */
const MAX_REDIRECTS = 4;
/** Without auto-reconnect, failed attempts to follow a redirect before giving up. */
const REDIRECT_ATTEMPTS = 3;

type ResumeOutcome =
  | { kind: "ok" }
  | { kind: "redirect"; url: string }
  | { kind: "fatal"; reason: ErrorCode | undefined; error?: ClientError }
  | { kind: "retry" };

/** A message pushed while a resync runs, with the message it replies to (0n: none). */
interface HeldPush {
  message: Message;
  replyTo: bigint;
}

/** The MessageMeta of a pushed message that replies to another; nothing else is known yet. */
function replyMeta(message: Message, replyTo: bigint): MessageMeta {
  return { id: message.id, replyTo, editedAt: 0n, reactions: [], mine: "" };
}

/** Connection, authentication, events and reconnect; see {@link Client} for the requests. */
export class ClientCore {
  protected readonly config: ResolvedConfig;
  private readonly events = new Emitter<ClientEvents>();
  private conn: Connection | undefined;
  /** Where the next reconnect goes: the URL given, or the last redirect's. */
  private url: string;
  private authOk: AuthOk | undefined;
  protected watermarkNow: bigint | undefined;
  /** A cluster's per-node watermarks that `watermarkNow` is the minimum of; else empty. */
  protected watermarksNow: bigint[] = [];
  private readonly dedupe = new Dedupe();
  /** A resync is running: pushed messages wait in `held` to come out after the backlog. */
  private resyncing = false;
  private held: HeldPush[] = [];
  /** `held` overflowed since this flag was cleared: a push was dropped, a sync must follow. */
  private heldDropped = false;
  private ended = false;
  private eventsClosed = false;
  private lastReason: ErrorCode | undefined;
  private readonly connWaiters = new Set<(connected: boolean) => void>();
  private readonly sink: Sink;
  /** The key the last encrypted handshake proved (hex). */
  private serverKeyNow: string | undefined;
  /** With trust on first use: the key learned at `url`, pinned for reconnects there. */
  private learnedKey: { url: string; key: string } | undefined;

  protected constructor(url: string, config: ResolvedConfig) {
    this.url = url;
    this.config = config;
    const client = this;
    this.sink = {
      onPush: (_conn, f) => client.onPush(f),
      onRedirect: (_conn, node, addr) => client.emit("redirected", { node, addr }),
      onClose: (conn) => client.onClose(conn),
    };
  }

  /** Opens the first connection; `Client.connect` calls it. */
  protected async openFirst(): Promise<void> {
    const conn = await Connection.open(this.url, this.connectionOptions(this.url), this.sink);
    this.install(conn);
  }

  /**
   * The options of a connection to `url`: its transport is the configured one wrapped in the
   * Noise layer (pinned to the configured key, or to the key learned at `url` on first use),
   * unless the config says plaintext.
   */
  private connectionOptions(url: string): ConnectionOptions {
    const c = this.config;
    const enc = c.encryption;
    let connector = c.connector;
    if (enc.kind !== "plaintext") {
      const learned = this.learnedKey?.url === url ? this.learnedKey.key : undefined;
      connector = noiseConnector(c.connector, {
        serverKey: enc.kind === "pinned" ? enc.serverKey : learned,
        random: c.randomBytes,
        onEstablished: (info) => {
          this.serverKeyNow = info.serverKey;
          // Noise Pipes: XX on first contact, then IK with the key it proved.
          if (enc.kind === "trustOnFirstUse") this.learnedKey = { url, key: info.serverKey };
        },
      });
    }
    return {
      connector,
      clock: c.clock,
      clientName: c.clientName,
      maxFrameLen: c.maxFrameLen,
      maxOutstanding: c.maxOutstanding,
      connectTimeoutMs: c.connectTimeoutMs,
      requestTimeoutMs: c.requestTimeoutMs,
    };
  }

  /** Subscribes to an event; returns the function that unsubscribes. */
  on<K extends keyof ClientEvents>(event: K, fn: (value: ClientEvents[K]) => void): () => void {
    return this.events.on(event, fn);
  }

  // ---- Authentication ----

  /** Creates an account and logs this device in. */
  register(handle: string, password: string): Promise<AuthOk> {
    return this.authenticate(frame("Register", { handle, password, device: this.config.device }));
  }

  /** Logs in with a password. */
  login(handle: string, password: string): Promise<AuthOk> {
    return this.authenticate(frame("Login", { handle, password, device: this.config.device }));
  }

  /** Logs in with the token of an earlier AuthOk; no password needed. */
  resume(token: Uint8Array): Promise<AuthOk> {
    return this.authenticate(frame("Resume", { token }));
  }

  /**
   * Resumes with the token and watermark kept in the storage by an earlier run, so what was
   * missed since comes out as events (with autoReconnect). NotLoggedIn if none is kept; a
   * token the server no longer knows is forgotten (INVALID_TOKEN).
   */
  resumeSaved(): Promise<AuthOk> {
    const storage = this.config.storage;
    const saved = storage === null ? undefined : loadSession(storage, this.config.storagePrefix);
    if (saved === undefined) return Promise.reject(new ClientError({ kind: "NotLoggedIn" }));
    if (saved.watermark !== undefined && this.watermarkNow === undefined) {
      this.watermarkNow = saved.watermark;
      this.watermarksNow = saved.watermarks;
    }
    return this.resume(saved.token);
  }

  /** Whether a token is kept in the storage for resumeSaved. */
  hasSavedSession(): boolean {
    const storage = this.config.storage;
    return storage !== null && loadSession(storage, this.config.storagePrefix) !== undefined;
  }

  private async authenticate(request: Frame): Promise<AuthOk> {
    let lastRedirect = { node: "", addr: "" };
    for (let attempt = 0; attempt <= MAX_REDIRECTS; attempt++) {
      const conn = this.current();
      // A reconnecting client catches up after AUTH_OK (afterAuth).
      const catchUp = this.config.autoReconnect;
      if (catchUp) this.beginResync();
      let reply: Frame | undefined;
      let failure: unknown;
      try {
        reply = await conn.request(request);
      } catch (e) {
        failure = e;
      }
      if (catchUp && reply?.type !== "AuthOk") {
        // What the connection pushed meanwhile (it may be logged in already) comes out.
        this.endResync([]);
      }
      if (reply?.type === "AuthOk") {
        this.authOk = reply;
        this.persistToken(reply.token);
        // A device with nothing saved starts at the login: what came before is history.
        if (this.watermarkNow === undefined) this.setWatermark(reply.watermark);
        await this.afterAuth(conn);
        return reply;
      }
      if (reply !== undefined) {
        throw new ClientError({ kind: "UnexpectedReply", request: request.type, reply: reply.type });
      }
      const redirect = conn.redirect;
      if (redirect === undefined) {
        if (request.type === "Resume" && failure instanceof ClientError && failure.code === ErrorCode.InvalidToken) {
          this.forgetSaved();
        }
        throw failure;
      }
      lastRedirect = redirect;
      conn.close();
      const url = this.config.redirectUrl(redirect.addr, this.url);
      const next = await Connection.open(url, this.connectionOptions(url), this.sink);
      this.url = url;
      this.install(next);
    }
    // The connection to the last redirect's node stays installed, for another try; the error
    // names that redirect (the Rust client names the fresh connection's, which has none).
    throw new ClientError({ kind: "TooManyRedirects", node: lastRedirect.node, addr: lastRedirect.addr });
  }

  /** A reconnecting client needs a watermark so that a later reconnect can sync the gap. */
  private async afterAuth(conn: Connection): Promise<void> {
    if (!this.config.autoReconnect) return;
    try {
      await this.catchUp(conn);
    } catch (e) {
      // The reconnect that follows a dropped connection will sync instead.
      if (!isConnectionError(e)) throw e;
    }
  }

  /** Revokes this device's token; the server closes the connection and the session ends. */
  logout(): Promise<void> {
    return this.endWith(frame("Logout", {}));
  }

  /** Revokes every token of the user: every device is disconnected. */
  logoutAll(): Promise<void> {
    return this.endWith(frame("LogoutAll", {}));
  }

  private async endWith(request: Frame): Promise<void> {
    // No reconnect for the close that follows.
    this.ended = true;
    try {
      expectFrame(await this.call(request), request.type, "Done");
      this.forgetSaved();
    } finally {
      this.close();
    }
  }

  // ---- Plumbing ----

  /** Sends a request and resolves with its reply (ERROR_REPLY rejects). */
  call(request: Frame): Promise<Frame> {
    let conn: Connection;
    try {
      conn = this.current();
    } catch (e) {
      return Promise.reject(e);
    }
    return conn.request(request);
  }

  /** Sends a frame that has no reply, such as TYPING. */
  sendFrame(f: Frame): void {
    this.current().sendOnly(f);
  }

  protected async expect<K extends FrameName>(request: Frame, want: K): Promise<FrameOf<K>> {
    return expectFrame(await this.call(request), request.type, want);
  }

  protected async done(request: Frame): Promise<void> {
    await this.expect(request, "Done");
  }

  /** The last AUTH_OK: user id, device id, token, handle. */
  get auth(): AuthOk | undefined {
    return this.authOk;
  }

  /** The logged-in user's id. */
  get userId(): bigint | undefined {
    return this.authOk?.user;
  }

  /** The session token, to keep for resume (the storage keeps it already). */
  get token(): Uint8Array | undefined {
    return this.authOk?.token;
  }

  /** The sync watermark: everything up to it has been synced. */
  get watermark(): bigint | undefined {
    return this.watermarkNow;
  }

  /** A cluster's per-node watermarks saved with `watermark` (empty from a single node). */
  get watermarks(): bigint[] {
    return this.watermarksNow;
  }

  /**
   * Sets the watermark saved from an earlier run (with a cluster's per-node watermarks, if
   * saved). A reconnecting client that logs in with a watermark set delivers what it missed
   * since then as events.
   */
  setWatermark(watermark: bigint, perNode: bigint[] = []): void {
    this.watermarkNow = watermark;
    this.watermarksNow = perNode;
    const storage = this.config.storage;
    if (storage !== null && this.authOk !== undefined) {
      saveWatermark(storage, this.config.storagePrefix, watermark, perNode);
    }
  }

  /** The per-node watermarks saved with `since`, if `since` is the saved watermark. */
  protected vectorFor(since: bigint): bigint[] {
    return since === this.watermarkNow ? this.watermarksNow : [];
  }

  /** The URL the client (re)connects to: the one given, or the last redirect's. */
  get serverUrl(): string {
    return this.url;
  }

  /** The current connection's WELCOME. */
  get welcome(): Welcome {
    return this.current().welcome;
  }

  /**
   * The server's public key (64 hex digits) as the last encrypted handshake proved it: the
   * pinned key, or with trust on first use the key learned, to show a person and pin from
   * then on (`serverKey` in the config). Undefined before the first handshake and on a
   * plaintext client.
   */
  get serverKey(): string | undefined {
    return this.serverKeyNow;
  }

  /** Whether a connection is up right now. */
  get isConnected(): boolean {
    return this.conn !== undefined;
  }

  /** Resolves true once a connection is up (after a reconnect); false on timeout or end. */
  waitConnected(timeoutMs: number): Promise<boolean> {
    if (this.conn !== undefined) return Promise.resolve(true);
    if (this.ended) return Promise.resolve(false);
    return new Promise((resolve) => {
      const waiter = (connected: boolean) => {
        cancel();
        this.connWaiters.delete(waiter);
        resolve(connected);
      };
      const cancel = this.config.clock.setTimer(() => waiter(this.conn !== undefined), timeoutMs);
      this.connWaiters.add(waiter);
    });
  }

  /** Closes the connection and ends the session (the token stays valid for a later resume). */
  close(): void {
    this.end(undefined);
  }

  /** Drops the transport as a network failure would, to exercise reconnect (tests). */
  breakConnectionForTest(): void {
    this.conn?.breakForTest();
  }

  protected current(): Connection {
    if (this.conn !== undefined) return this.conn;
    throw new ClientError({ kind: "Disconnected", reason: this.lastReason });
  }

  /** Makes `conn` current unless it already closed (or the session ended); false if not. */
  private install(conn: Connection): boolean {
    if (conn.closed) return false;
    if (this.ended) {
      conn.close();
      return false;
    }
    const old = this.conn;
    this.conn = conn;
    old?.close();
    for (const w of [...this.connWaiters]) w(true);
    return true;
  }

  private emit<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]): void {
    if (!this.eventsClosed) this.events.emit(event, value);
  }

  /** Ends the session: closes the connection and emits sessionEnded once. */
  private end(reason: ErrorCode | undefined, error?: ClientError): void {
    const conn = this.conn;
    this.conn = undefined;
    this.ended = true;
    if (reason !== undefined) this.lastReason = reason;
    conn?.close();
    if (!this.eventsClosed) {
      this.emit("sessionEnded", error === undefined ? { reason } : { reason, error });
      this.eventsClosed = true;
    }
    for (const w of [...this.connWaiters]) w(false);
  }

  private persistToken(token: Uint8Array): void {
    const storage = this.config.storage;
    if (storage !== null) saveToken(storage, this.config.storagePrefix, token);
  }

  private forgetSaved(): void {
    const storage = this.config.storage;
    if (storage !== null) forgetSession(storage, this.config.storagePrefix);
  }

  /** A pushed message: held during a resync, else emitted once, its reply meta after it. */
  private deliverMessage(message: Message, replyTo: bigint): void {
    if (this.resyncing) {
      // Bounded: the oldest is dropped; the catch-up syncs again and recovers it (catchUp).
      if (this.held.length >= this.config.maxHeldPushes) {
        this.held.shift();
        this.heldDropped = true;
      }
      this.held.push({ message, replyTo });
    } else if (this.dedupe.insert(message.thread, message.id)) {
      this.emit("message", message);
      if (replyTo !== 0n) this.emit("messageMeta", { thread: message.thread, meta: replyMeta(message, replyTo) });
    }
  }

  /**
   * Syncs from the saved watermark on `conn`: records everything in the dedupe set and emits
   * what is new, unless this is the first sync (no watermark), which only sets one.
   */
  private async catchUp(conn: Connection): Promise<void> {
    this.resyncing = true;
    const out: Array<() => void> = [];
    try {
      // A push dropped from a full `held` came after the sync's walk began, so it is above the
      // watermark that sync saves: another sync from there returns it. Bounded rounds; past
      // them the rest wait above the saved watermark for the next sync.
      for (let round = 1; ; round++) {
        const since = this.watermarkNow;
        this.heldDropped = false;
        const from = since ?? 0n;
        const synced = await syncPages(
          conn,
          from,
          this.config.syncPage,
          this.config.requestTimeoutMs,
          this.vectorFor(from),
        );
        this.recordSync(synced, since !== undefined, out);
        if (!this.heldDropped || round >= MAX_CATCH_UP_ROUNDS) break;
      }
    } finally {
      this.endResync(out);
    }
  }

  /** Holds pushes back from now on: a catch-up follows the authentication about to be sent. */
  private beginResync(): void {
    this.resyncing = true;
  }

  /** Emits `backlog`, then the pushes held meanwhile that are new, and stops holding. */
  private endResync(backlog: Array<() => void>): void {
    const held = this.held;
    this.held = [];
    for (const { message, replyTo } of held) {
      if (this.dedupe.insert(message.thread, message.id)) {
        backlog.push(() => this.emit("message", message));
        if (replyTo !== 0n) {
          const meta = replyMeta(message, replyTo);
          backlog.push(() => this.emit("messageMeta", { thread: message.thread, meta }));
        }
      }
    }
    this.resyncing = false;
    for (const emit of backlog) emit();
  }

  /** Records a completed sync: dedupe, floors, watermark; queues the events to emit. */
  protected recordSync(synced: SyncResult, deliver: boolean, out: Array<() => void>): void {
    if (deliver) {
      for (const t of synced.threads) out.push(() => this.emit("threadUpdated", t));
    }
    const metas = new Map<bigint, MessageMeta>();
    if (deliver) for (const meta of synced.meta) metas.set(meta.id, meta);
    for (const m of synced.messages) {
      if (this.dedupe.insert(m.thread, m.id) && deliver) {
        out.push(() => this.emit("message", m));
        const meta = metas.get(m.id);
        if (meta !== undefined) out.push(() => this.emit("messageMeta", { thread: m.thread, meta }));
      }
    }
    // Sync returns every message above `since` in a changed thread, so everything up to the
    // newest one returned has now been seen.
    for (const m of synced.messages) this.dedupe.raiseFloor(m.thread, m.id);
    this.setWatermark(synced.watermark, synced.watermarks);
  }

  private onPush(f: Frame): void {
    switch (f.type) {
      case "MessagePush":
        this.deliverMessage(f.message, f.replyTo);
        break;
      case "ReceiptPush":
        this.emit("receipt", { thread: f.thread, user: f.user, kind: f.kind, upTo: f.upTo });
        break;
      case "PresencePush":
        this.emit("presence", f.presence);
        break;
      case "TypingPush":
        this.emit("typing", { thread: f.thread, user: f.user, active: f.active });
        break;
      default:
      // A push type this client does not know yet is no event.
    }
  }

  private onClose(conn: Connection): void {
    if (this.conn !== conn) return; // not (or no longer) current: whoever replaced it is in charge
    this.conn = undefined;
    if (conn.closedLocally) return;
    const reason = conn.closeReason;
    const redirect = conn.redirect;
    this.lastReason = reason;
    const authed = this.authOk !== undefined;
    if (this.ended) return;
    this.emit("disconnected", { reason });
    if (!authed && redirect !== undefined) {
      // authenticate() is waiting on this connection and follows the redirect itself.
      return;
    }
    if (reason === ErrorCode.SessionRevoked) this.forgetSaved();
    if (!authed || reason === ErrorCode.SessionRevoked) {
      this.end(reason);
      return;
    }
    if (!this.config.autoReconnect && redirect === undefined) {
      this.end(reason);
      return;
    }
    const target = redirect === undefined ? undefined : this.config.redirectUrl(redirect.addr, this.url);
    void this.reconnectLoop(target);
  }

  /** Reconnects until it works or the session ends. */
  private async reconnectLoop(redirect: string | undefined): Promise<void> {
    const backoff = new Backoff(this.config.backoff, this.config.random);
    const persistent = this.config.autoReconnect;
    let target = redirect;
    let redirects = 0;
    let failures = 0;
    for (;;) {
      if (this.ended) return;
      const url = target ?? this.url;
      const outcome = await this.resumeOn(url);
      switch (outcome.kind) {
        case "ok":
          this.emit("reconnected", { url });
          return;
        case "redirect":
          redirects++;
          target = outcome.url;
          if (redirects <= MAX_REDIRECTS) continue;
          redirects = 0;
          break;
        case "fatal":
          this.end(outcome.reason, outcome.error);
          return;
        case "retry":
          failures++;
          if (!persistent && failures >= REDIRECT_ATTEMPTS) {
            this.end(undefined);
            return;
          }
      }
      await sleep(this.config.clock, backoff.nextDelay());
    }
  }

  private async resumeOn(url: string): Promise<ResumeOutcome> {
    const token = this.authOk?.token;
    if (token === undefined) return { kind: "fatal", reason: undefined };
    let conn: Connection;
    try {
      conn = await Connection.open(url, this.connectionOptions(url), this.sink);
    } catch (e) {
      // A server that no longer holds the pinned (or learned) key is refused every time:
      // stop and say so rather than retry forever. Never fall back to an unpinned handshake.
      if (e instanceof ClientError && e.detail.kind === "Encryption" && e.detail.error.detail.kind === "ServerKeyMismatch") {
        return { kind: "fatal", reason: undefined, error: e };
      }
      return { kind: "retry" };
    }
    const redirected = (): ResumeOutcome => {
      const r = conn.redirect;
      return r === undefined ? { kind: "retry" } : { kind: "redirect", url: this.config.redirectUrl(r.addr, url) };
    };
    this.beginResync();
    let reply: Frame | undefined;
    let failure: unknown;
    try {
      reply = await conn.request(frame("Resume", { token }));
    } catch (e) {
      failure = e;
    }
    if (reply?.type !== "AuthOk") this.endResync([]);
    if (reply?.type === "AuthOk") {
      this.authOk = reply;
      this.persistToken(reply.token);
    } else if (reply !== undefined) {
      conn.close();
      return { kind: "retry" };
    } else {
      conn.close();
      const code = failure instanceof ClientError && failure.detail.kind === "Server" ? failure.code : undefined;
      if (code === ErrorCode.InvalidToken || code === ErrorCode.SessionRevoked) {
        this.forgetSaved();
        return { kind: "fatal", reason: code };
      }
      return redirected();
    }
    try {
      await this.catchUp(conn);
    } catch {
      conn.close();
      return redirected();
    }
    this.url = url;
    if (!this.install(conn)) return redirected();
    return { kind: "ok" };
  }
}
