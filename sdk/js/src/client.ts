/**
 * The client: one current connection, the session (token, watermark, dedupe), the events,
 * and the reconnect loop. A port of client/src/client.rs, sync.rs and api/ with the same
 * behaviour, over any {@link Connector} (WebSocket by default).
 *
 * ```ts
 * const client = await Client.connect("ws://127.0.0.1:7880/", { autoReconnect: true });
 * await client.login("alice", "correct horse");
 * client.on("message", (m) => console.log(m.sender, new TextDecoder().decode(m.body)));
 * const bob = await client.lookupUser("bob");
 * const thread = await client.openDirect(bob.id);
 * await client.sendText(thread.id, "hello");
 * ```
 *
 * With `autoReconnect`, a dropped connection is re-established with jittered exponential
 * backoff: HELLO, RESUME with the saved token, then SYNC from the saved watermark. Missed
 * messages come out as "message" events, each (thread, id) once: pushes that arrive while a
 * sync runs are held and come out after the backlog, deduplicated.
 */

import { Backoff, DEFAULT_BACKOFF, type BackoffPolicy } from "./backoff.js";
import { ClientError, isConnectionError } from "./client_error.js";
import { systemClock, sleep, type Clock } from "./clock.js";
import { MAX_FRAME_LEN } from "./codec.js";
import { Connection, type ConnectionOptions, type Sink } from "./connection.js";
import { Dedupe } from "./dedupe.js";
import { Emitter } from "./emitter.js";
import { ErrorCode } from "./errors.js";
import {
  frame,
  MessageKind,
  type AuthOk,
  type Direction,
  type Frame,
  type FrameName,
  type FrameOf,
  type MediaData,
  type MediaRef,
  type MediaUpload,
  type Message,
  type MessageRef,
  type Messages,
  type Presence,
  type ReadersList,
  type ReceiptKind,
  type Sent,
  type Stat,
  type Thread,
  type ThreadList,
  type ThreadSummary,
  type UserInfo,
  type Welcome,
} from "./frames.js";
import { DEFAULT_MAX_OUTSTANDING } from "./session.js";
import {
  defaultStorage,
  forgetSession,
  loadSession,
  saveToken,
  saveWatermark,
  type TokenStorage,
} from "./storage.js";
import { webSocketConnector, type Connector, type WebSocketConstructor } from "./transport.js";

/** Redirects followed in a row before giving up: a loop between nodes is a server bug. */
const MAX_REDIRECTS = 4;
/** Without auto-reconnect, failed attempts to follow a redirect before giving up. */
const REDIRECT_ATTEMPTS = 3;
/** Page size of listAllThreads. */
const THREAD_PAGE = 200;
/** Most ids one GET_USERS may carry; users() splits longer lists. */
const GET_USERS_MAX = 1000;
/** Room left in a frame for the header and the fixed fields around media data. */
const FRAME_OVERHEAD = 128;

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
  /** The WebSocket constructor, for runtimes without a global one (Node 20). */
  WebSocket?: WebSocketConstructor;
  /** The transport; overrides `WebSocket`. Tests pass an in-memory one; Noise wraps one. */
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

type Resolved = Required<Omit<ClientConfig, "WebSocket" | "storage">> & {
  storage: TokenStorage | null;
};

function resolveConfig(c: ClientConfig): Resolved {
  return {
    clientName: c.clientName ?? "courier-client-js/0.1.0",
    device: c.device ?? "default",
    requestTimeoutMs: c.requestTimeoutMs ?? 10_000,
    connectTimeoutMs: c.connectTimeoutMs ?? 5_000,
    autoReconnect: c.autoReconnect ?? false,
    backoff: c.backoff ?? DEFAULT_BACKOFF,
    maxFrameLen: c.maxFrameLen ?? MAX_FRAME_LEN,
    syncPage: c.syncPage ?? 500,
    maxOutstanding: c.maxOutstanding ?? DEFAULT_MAX_OUTSTANDING,
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

/** What the client tells its user without being asked (client/src/event.rs). */
export type ClientEvents = {
  /** A new message, pushed or recovered by sync after a reconnect; each (thread, id) once. */
  message: Message;
  /** A member's delivered or read cursor advanced (the user's own, on another device, too). */
  receipt: { thread: bigint; user: bigint; kind: ReceiptKind; upTo: bigint };
  /** A subscribed contact went online or offline. */
  presence: Presence;
  /** A member started or stopped typing. */
  typing: { thread: bigint; user: bigint; active: boolean };
  /** A thread's state as of a sync after a reconnect (members and cursors may have moved). */
  threadUpdated: Thread;
  /** The connection dropped; a reconnecting client follows with reconnected or sessionEnded. */
  disconnected: { reason: ErrorCode | undefined };
  /** The server sent this user to another node; the client reconnects there. */
  redirected: { node: string; addr: string };
  /** A new connection is up, resumed and synced. */
  reconnected: { url: string };
  /** The session is over for good (logout, token revoked, close). No events follow. */
  sessionEnded: { reason: ErrorCode | undefined };
};

/** What one full sync returned. */
export interface SyncResult {
  /** Every thread that changed since the watermark, in full. */
  threads: Thread[];
  /** Every new message in those threads, thread by thread, each thread's in id order. */
  messages: Message[];
  /** Pass this as `since` next time. */
  watermark: bigint;
  /** Messages the user deleted for themselves since the watermark. */
  deleted: MessageRef[];
}

type ResumeOutcome =
  | { kind: "ok" }
  | { kind: "redirect"; url: string }
  | { kind: "fatal"; reason: ErrorCode | undefined }
  | { kind: "retry" };

/** A fresh, non-zero id for a message, chosen by the sender so a retry can be recognised. */
export function newClientMsgId(): bigint {
  const raw = new Uint8Array(8);
  for (;;) {
    const c = (globalThis as { crypto?: { getRandomValues(a: Uint8Array): Uint8Array } }).crypto;
    if (c !== undefined) {
      c.getRandomValues(raw);
    } else {
      for (let i = 0; i < 8; i++) raw[i] = Math.floor(Math.random() * 256);
    }
    const id = new DataView(raw.buffer).getBigUint64(0);
    if (id !== 0n) return id;
  }
}

const utf8 = new TextEncoder();

/** Asks for SYNC pages until the server says there are no more. */
async function syncPages(conn: Connection, since: bigint, limit: number, timeoutMs: number): Promise<SyncResult> {
  const out: SyncResult = { threads: [], messages: [], watermark: 0n, deleted: [] };
  // The cursor and the walk's watermark: 0s ask for a new walk; every later page carries the
  // first batch's watermark back, so nothing committed mid-walk hides below it.
  let afterThread = 0n;
  let afterMessage = 0n;
  let watermark = 0n;
  for (;;) {
    const reply = await conn.request(
      frame("Sync", { since, afterThread, afterMessage, limit, watermark }),
      timeoutMs,
    );
    const batch = expectFrame(reply, "Sync", "SyncBatch");
    out.threads.push(...batch.threads);
    out.messages.push(...batch.messages);
    out.deleted.push(...batch.deleted);
    if (!batch.more) {
      out.watermark = batch.watermark;
      return out;
    }
    afterThread = batch.nextThread;
    afterMessage = batch.nextMessage;
    watermark = batch.watermark;
  }
}

function expectFrame<K extends FrameName>(reply: Frame, request: string, want: K): FrameOf<K> {
  if (reply.type !== want) {
    throw new ClientError({ kind: "UnexpectedReply", request, reply: reply.type });
  }
  return reply as FrameOf<K>;
}

/**
 * A Courier client. Requests return promises matched to replies by request id, so any number
 * may be in flight. Pushes come out as events: `client.on("message", fn)`.
 */
export class Client {
  private readonly config: Resolved;
  private readonly events = new Emitter<ClientEvents>();
  private conn: Connection | undefined;
  /** Where the next reconnect goes: the URL given, or the last redirect's. */
  private url: string;
  private authOk: AuthOk | undefined;
  private watermarkNow: bigint | undefined;
  private readonly dedupe = new Dedupe();
  /** A resync is running: pushed messages wait in `held` to come out after the backlog. */
  private resyncing = false;
  private held: Message[] = [];
  private ended = false;
  private eventsClosed = false;
  private lastReason: ErrorCode | undefined;
  private readonly connWaiters = new Set<(connected: boolean) => void>();
  private readonly sink: Sink;

  private constructor(url: string, config: Resolved) {
    this.url = url;
    this.config = config;
    const client = this;
    this.sink = {
      onPush: (_conn, f) => client.onPush(f),
      onRedirect: (_conn, node, addr) => client.emit("redirected", { node, addr }),
      onClose: (conn) => client.onClose(conn),
    };
  }

  /**
   * Opens a connection to `url` (e.g. `ws://host:port/`) and performs the HELLO/WELCOME
   * handshake. Then log in with register, login, resume or resumeSaved.
   */
  static async connect(url: string, config: ClientConfig = {}): Promise<Client> {
    const client = new Client(url, resolveConfig(config));
    const conn = await Connection.open(url, client.connectionOptions(), client.sink);
    client.install(conn);
    return client;
  }

  private connectionOptions(): ConnectionOptions {
    const c = this.config;
    return {
      connector: c.connector,
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
    }
    return this.resume(saved.token);
  }

  /** Whether a token is kept in the storage for resumeSaved. */
  hasSavedSession(): boolean {
    const storage = this.config.storage;
    return storage !== null && loadSession(storage, this.config.storagePrefix) !== undefined;
  }

  private async authenticate(request: Frame): Promise<AuthOk> {
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
      conn.close();
      const url = this.config.redirectUrl(redirect.addr, this.url);
      const next = await Connection.open(url, this.connectionOptions(), this.sink);
      this.url = url;
      this.install(next);
    }
    const last = this.conn?.redirect ?? { node: "", addr: "" };
    throw new ClientError({ kind: "TooManyRedirects", node: last.node, addr: last.addr });
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

  private async expect<K extends FrameName>(request: Frame, want: K): Promise<FrameOf<K>> {
    return expectFrame(await this.call(request), request.type, want);
  }

  private async done(request: Frame): Promise<void> {
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

  /**
   * Sets the watermark saved from an earlier run. A reconnecting client that logs in with a
   * watermark set delivers what it missed since then as events.
   */
  setWatermark(watermark: bigint): void {
    this.watermarkNow = watermark;
    const storage = this.config.storage;
    if (storage !== null && this.authOk !== undefined) {
      saveWatermark(storage, this.config.storagePrefix, watermark);
    }
  }

  /** The URL the client (re)connects to: the one given, or the last redirect's. */
  get serverUrl(): string {
    return this.url;
  }

  /** The current connection's WELCOME. */
  get welcome(): Welcome {
    return this.current().welcome;
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

  private current(): Connection {
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
  private end(reason: ErrorCode | undefined): void {
    const conn = this.conn;
    this.conn = undefined;
    this.ended = true;
    if (reason !== undefined) this.lastReason = reason;
    conn?.close();
    if (!this.eventsClosed) {
      this.emit("sessionEnded", { reason });
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

  private deliverMessage(message: Message): void {
    if (this.resyncing) {
      this.held.push(message);
    } else if (this.dedupe.insert(message.thread, message.id)) {
      this.emit("message", message);
    }
  }

  /**
   * Syncs from the saved watermark on `conn`: records everything in the dedupe set and emits
   * what is new, unless this is the first sync (no watermark), which only sets one.
   */
  private async catchUp(conn: Connection): Promise<void> {
    this.resyncing = true;
    const since = this.watermarkNow;
    const out: Array<() => void> = [];
    try {
      const synced = await syncPages(conn, since ?? 0n, this.config.syncPage, this.config.requestTimeoutMs);
      this.recordSync(synced, since !== undefined, out);
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
    for (const message of held) {
      if (this.dedupe.insert(message.thread, message.id)) {
        backlog.push(() => this.emit("message", message));
      }
    }
    this.resyncing = false;
    for (const emit of backlog) emit();
  }

  /** Records a completed sync: dedupe, floors, watermark; queues the events to emit. */
  private recordSync(synced: SyncResult, deliver: boolean, out: Array<() => void>): void {
    if (deliver) {
      for (const t of synced.threads) out.push(() => this.emit("threadUpdated", t));
    }
    for (const m of synced.messages) {
      if (this.dedupe.insert(m.thread, m.id) && deliver) out.push(() => this.emit("message", m));
    }
    // Sync returns every message above `since` in a changed thread, so everything up to the
    // newest one returned has now been seen.
    for (const m of synced.messages) this.dedupe.raiseFloor(m.thread, m.id);
    this.setWatermark(synced.watermark);
  }

  private onPush(f: Frame): void {
    switch (f.type) {
      case "MessagePush":
        this.deliverMessage(f.message);
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
          this.end(outcome.reason);
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
      conn = await Connection.open(url, this.connectionOptions(), this.sink);
    } catch {
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

  // ---- Threads and groups ----

  /** The one direct thread between the caller and `peer`, created on first use. */
  async openDirect(peer: bigint): Promise<Thread> {
    return (await this.expect(frame("OpenDirect", { peer }), "ThreadInfo")).thread;
  }

  /** Creates a group with the caller as admin and these members. */
  async createGroup(name: string, members: bigint[]): Promise<Thread> {
    return (await this.expect(frame("CreateGroup", { name, members }), "ThreadInfo")).thread;
  }

  /** Adds members to a group (admins only). */
  addMembers(thread: bigint, members: bigint[]): Promise<void> {
    return this.done(frame("AddMembers", { thread, members }));
  }

  /** Removes a member from a group (admins only). */
  removeMember(thread: bigint, user: bigint): Promise<void> {
    return this.done(frame("RemoveMember", { thread, user }));
  }

  /** Leaves a group. */
  leaveGroup(thread: bigint): Promise<void> {
    return this.done(frame("LeaveGroup", { thread }));
  }

  /** Renames a group. */
  renameGroup(thread: bigint, name: string): Promise<void> {
    return this.done(frame("RenameGroup", { thread, name }));
  }

  /** One page of the thread list, newest activity first, after the cursor (0n, 0n first). */
  listThreads(beforeMsgId: bigint, beforeThread: bigint, limit: number): Promise<ThreadList> {
    return this.expect(frame("ListThreads", { beforeMsgId, beforeThread, limit }), "ThreadList");
  }

  /** The whole thread list, all pages. */
  async listAllThreads(): Promise<ThreadSummary[]> {
    const out: ThreadSummary[] = [];
    for (;;) {
      const last = out.at(-1);
      const page = await this.listThreads(last?.lastMsgId ?? 0n, last?.id ?? 0n, THREAD_PAGE);
      out.push(...page.threads);
      if (!page.more || page.threads.length === 0) return out;
    }
  }

  /** A thread in full, with members and their receipt cursors. */
  async getThread(thread: bigint): Promise<Thread> {
    return (await this.expect(frame("GetThread", { thread }), "ThreadInfo")).thread;
  }

  /** Sets the caller's private state of a thread: muted, hidden, label. */
  setThreadState(thread: bigint, muted: boolean, hidden: boolean, label: string): Promise<void> {
    return this.done(frame("SetThreadState", { thread, muted, hidden, label }));
  }

  // ---- Messages, receipts, sync ----

  /** Sends with a fresh clientMsgId; resolves once the message is durable (the first tick). */
  send(thread: bigint, kind: MessageKind, body: Uint8Array | string): Promise<Sent> {
    return this.sendWithId(thread, newClientMsgId(), kind, body);
  }

  /** Sends a text message. */
  sendText(thread: bigint, text: string): Promise<Sent> {
    return this.send(thread, MessageKind.Text, text);
  }

  /**
   * Sends with a caller-chosen clientMsgId. Sending the same id again in the same thread
   * returns the original SENT and stores nothing.
   */
  sendWithId(thread: bigint, clientMsgId: bigint, kind: MessageKind, body: Uint8Array | string): Promise<Sent> {
    const bytes = typeof body === "string" ? utf8.encode(body) : body;
    return this.expect(frame("Send", { thread, clientMsgId, kind, body: bytes }), "Sent");
  }

  /**
   * Sends, and when the connection fails before SENT arrives, waits for the reconnect and
   * retries with the same clientMsgId until `giveUpAfterMs` has passed. The server
   * deduplicates, so the message is stored once however many attempts reached it.
   */
  async sendWithRetry(
    thread: bigint,
    kind: MessageKind,
    body: Uint8Array | string,
    giveUpAfterMs: number,
    clientMsgId: bigint = newClientMsgId(),
  ): Promise<Sent> {
    const clock = this.config.clock;
    const deadline = clock.now() + giveUpAfterMs;
    for (;;) {
      try {
        return await this.sendWithId(thread, clientMsgId, kind, body);
      } catch (e) {
        if (!isConnectionError(e)) throw e;
        const left = deadline - clock.now();
        if (left <= 0 || !(await this.waitConnected(left))) throw e;
      }
    }
  }

  /**
   * Messages older (Backward, newest first) or newer (Forward, oldest first) than `anchor`;
   * anchor 0n means from the newest (backward) or the oldest (forward).
   */
  history(thread: bigint, anchor: bigint, direction: Direction, limit: number): Promise<Messages> {
    return this.expect(frame("History", { thread, anchor, direction, limit }), "Messages");
  }

  /** Moves the caller's delivered or read cursor in a thread up to `upTo` (cumulative). */
  receipt(thread: bigint, kind: ReceiptKind, upTo: bigint): Promise<void> {
    return this.done(frame("Receipt", { thread, kind, upTo }));
  }

  /** Recalls one of the caller's messages (within the recall window). */
  recall(thread: bigint, message: bigint): Promise<void> {
    return this.done(frame("Recall", { thread, message }));
  }

  /** Hides a message from the caller's own history on all their devices. */
  deleteForMe(thread: bigint, message: bigint): Promise<void> {
    return this.done(frame("DeleteForMe", { thread, message }));
  }

  /** Which members have received and read a message. */
  readers(thread: bigint, message: bigint): Promise<ReadersList> {
    return this.expect(frame("Readers", { thread, message }), "ReadersList");
  }

  /** Tells the other members the caller is (or stopped) typing. Never answered. */
  typing(thread: bigint, active: boolean): void {
    this.sendFrame(frame("Typing", { thread, active }));
  }

  /**
   * Everything that changed since the saved watermark (else the login's, else the beginning),
   * over all pages. Saves the new watermark and counts the messages as seen, so events will
   * not repeat them.
   */
  sync(): Promise<SyncResult> {
    return this.syncSince(this.watermarkNow ?? 0n);
  }

  /** Like sync() from an explicit watermark. */
  async syncSince(since: bigint): Promise<SyncResult> {
    const result = await syncPages(this.current(), since, this.config.syncPage, this.config.requestTimeoutMs);
    this.recordSync(result, false, []);
    return result;
  }

  // ---- Contacts and presence ----

  /** Adds a user to the caller's contacts. */
  contactAdd(user: bigint): Promise<void> {
    return this.done(frame("ContactAdd", { user }));
  }

  /** Removes a user from the caller's contacts. */
  contactRemove(user: bigint): Promise<void> {
    return this.done(frame("ContactRemove", { user }));
  }

  /** The caller's contacts. */
  async contacts(): Promise<UserInfo[]> {
    return (await this.expect(frame("ContactList", {}), "Contacts")).users;
  }

  /** Finds a user by handle (UNKNOWN_USER if there is none). */
  async lookupUser(handle: string): Promise<UserInfo> {
    return (await this.expect(frame("LookupUser", { handle }), "User")).user;
  }

  /** The handles of these users; unknown ids are left out. Any number of ids. */
  async users(ids: bigint[]): Promise<UserInfo[]> {
    const out: UserInfo[] = [];
    for (let i = 0; i < ids.length; i += GET_USERS_MAX) {
      const users = ids.slice(i, i + GET_USERS_MAX);
      out.push(...(await this.expect(frame("GetUsers", { users }), "Users")).users);
    }
    return out;
  }

  /**
   * Asks for presence events of these contacts for the life of the connection.
   * Re-subscribe after a reconnect ("reconnected" event).
   */
  presenceSubscribe(users: bigint[]): Promise<void> {
    return this.done(frame("PresenceSubscribe", { users }));
  }

  /** Online state and last-seen time of these contacts. */
  async presenceQuery(users: bigint[]): Promise<Presence[]> {
    return (await this.expect(frame("PresenceQuery", { users }), "PresenceList")).entries;
  }

  // ---- Media ----

  /** Starts an upload of `totalLen` bytes. */
  mediaBegin(totalLen: bigint, mime: string): Promise<MediaUpload> {
    return this.expect(frame("MediaBegin", { totalLen, mime }), "MediaUpload");
  }

  /** Sends one chunk; `offset` must be the number of bytes sent so far. */
  mediaChunk(upload: bigint, offset: bigint, data: Uint8Array): Promise<void> {
    return this.done(frame("MediaChunk", { upload, offset, data }));
  }

  /** Finishes an upload; the media id goes into a Media-kind message. */
  mediaCommit(upload: bigint): Promise<MediaRef> {
    return this.expect(frame("MediaCommit", { upload }), "MediaRef");
  }

  /** Reads up to `maxLen` bytes of a media object from `offset`. */
  mediaGet(media: Uint8Array, offset: bigint, maxLen: number): Promise<MediaData> {
    return this.expect(frame("MediaGet", { media, offset, maxLen }), "MediaData");
  }

  /** Uploads `data` whole: begin, chunks no larger than the server allows, commit. */
  async uploadMedia(mime: string, data: Uint8Array): Promise<MediaRef> {
    const upload = await this.mediaBegin(BigInt(data.length), mime);
    const room = Math.max(this.current().maxFrame() - FRAME_OVERHEAD, 1);
    const chunk = Math.max(Math.min(upload.chunkMax, room), 1);
    for (let offset = 0; offset < data.length; offset += chunk) {
      await this.mediaChunk(upload.upload, BigInt(offset), data.subarray(offset, offset + chunk));
    }
    return this.mediaCommit(upload.upload);
  }

  /** Downloads a media object whole. */
  async downloadMedia(media: Uint8Array): Promise<Uint8Array> {
    const room = Math.max(this.current().maxFrame() - FRAME_OVERHEAD, 1);
    const parts: Uint8Array[] = [];
    let got = 0;
    for (;;) {
      const part = await this.mediaGet(media, BigInt(got), room);
      parts.push(part.data);
      got += part.data.length;
      if (part.data.length === 0 || BigInt(got) >= part.totalLen) break;
    }
    const out = new Uint8Array(got);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  // ---- Administration ----

  /** The server's counters; admin accounts only (FORBIDDEN otherwise). */
  async adminStats(): Promise<Stat[]> {
    return (await this.expect(frame("AdminStats", {}), "Stats")).entries;
  }
}
