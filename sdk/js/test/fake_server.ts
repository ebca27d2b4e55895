/**
 * An in-memory server for the client tests: a {@link Connector} whose transports talk to a
 * small scripted Courier world (accounts, tokens, direct threads, messages, receipts, sync
 * with paging) using the library's own codec, and a manual clock. Bytes travel through
 * microtasks, so `settle()` lets everything in flight arrive; nothing depends on real time.
 *
 * A test drives races by hand: `intercept` holds a request unanswered (the test answers it
 * later with `conn.reply`), `conn.drop()` cuts a connection as a network failure would.
 */

import { Decoder, encode, VERSION } from "../src/codec.js";
import type { Clock } from "../src/clock.js";
import { ErrorCode } from "../src/errors.js";
import {
  frame,
  MessageKind,
  Role,
  SystemEventCodec,
  SystemEventKind,
  ThreadKind,
  type Frame,
  type Message,
  type MessageMeta,
  type ReactionCount,
  type Thread,
} from "../src/frames.js";
import { Writer } from "../src/wire.js";
import type { Connector, TransportHandlers } from "../src/transport.js";

/** Lets every microtask and immediate in flight run. */
export async function settle(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}

/** A clock that moves only when told to; due timers fire in time order. */
export class ManualClock implements Clock {
  private t = 1_000_000;
  private seq = 0;
  private timers = new Map<number, { at: number; fn: () => void }>();

  now(): number {
    return this.t;
  }

  setTimer(fn: () => void, ms: number): () => void {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return () => this.timers.delete(id);
  }

  /** Moves time forward by `ms`, firing due timers in order and settling after each. */
  async advance(ms: number): Promise<void> {
    const target = this.t + ms;
    for (;;) {
      await settle();
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const e of this.timers) {
        if (e[1].at <= target && (next === undefined || e[1].at < next[1].at)) next = e;
      }
      if (next === undefined) break;
      this.timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].at);
      next[1].fn();
    }
    this.t = target;
    await settle();
  }

  /** When the earliest pending timer fires, if any. */
  nextTimer(): number | undefined {
    let at: number | undefined;
    for (const { at: a } of this.timers.values()) if (at === undefined || a < at) at = a;
    return at;
  }
}

const hexOf = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

/** One connection as the server sees it. */
export class FakeConn {
  readonly decoder = new Decoder(1 << 20);
  /** Every frame the client sent on this connection, in order. */
  readonly received: Array<{ requestId: number; frame: Frame }> = [];
  user: bigint | undefined;
  open = true;
  /** The client closed its transport: nothing reaches it any more. */
  clientClosed = false;

  constructor(
    readonly server: FakeServer,
    readonly url: string,
    private readonly handlers: TransportHandlers,
  ) {}

  /** Sends a frame to the client (a reply with its request id, or a push with 0). */
  reply(requestId: number, f: Frame): void {
    this.sendBytes(encode(requestId, f));
  }

  /** Sends raw bytes (one WebSocket message) to the client. */
  sendBytes(bytes: Uint8Array): void {
    if (!this.open) return;
    // Bytes sent before a drop still arrive, as on TCP; none after the client closed.
    queueMicrotask(() => {
      if (!this.clientClosed) this.handlers.onBytes(bytes);
    });
  }

  /** The network fails: the client sees its transport close. */
  drop(): void {
    if (!this.open) return;
    this.open = false;
    this.server.conns.delete(this);
    queueMicrotask(() => {
      if (!this.clientClosed) this.handlers.onClose("connection reset (test)");
    });
  }

  /** The server closes with ERROR_REPLY(0, code), as it does for a revoked session. */
  closeWith(code: number, message: string): void {
    this.reply(0, frame("ErrorReply", { code, message }));
    queueMicrotask(() => this.drop());
  }

  /** Frames of one type the client sent here. */
  sent(type: Frame["type"]): Frame[] {
    return this.received.filter((e) => e.frame.type === type).map((e) => e.frame);
  }
}

interface StoredThread {
  thread: Thread;
  messages: Message[];
  /** (sender, clientMsgId) -> message id: a retried SEND stores nothing. */
  byClientId: Map<string, bigint>;
  /** Message id -> what it replies to, its last edit, each member's reaction. */
  extras?: Map<bigint, Extras>;
}

interface Extras {
  replyTo: bigint;
  editedAt: bigint;
  /** user -> their one reaction. */
  reactions: Map<bigint, string>;
}

/** Reaction counts, most frequent first, ties by reaction (as the server orders them). */
function counts(reactions: Map<bigint, string>): ReactionCount[] {
  const n = new Map<string, number>();
  for (const r of reactions.values()) n.set(r, (n.get(r) ?? 0) + 1);
  return [...n]
    .map(([reaction, count]) => ({ reaction, count }))
    .sort((a, b) => b.count - a.count || (a.reaction < b.reaction ? -1 : a.reaction > b.reaction ? 1 : 0));
}

/** The in-memory Courier world behind every connection made through `connector`. */
export class FakeServer {
  readonly conns = new Set<FakeConn>();
  /** Every connection ever opened, in order. */
  readonly opened: FakeConn[] = [];
  heartbeatSecs = 0;
  maxFrame = 65536;
  /** Answers before the default one; return true when the request is handled (or held). */
  intercept: ((conn: FakeConn, requestId: number, f: Frame) => boolean) | undefined;
  /** When set, a connection attempt fails before opening with this reason. */
  refuse: string | undefined;
  private users = new Map<string, { id: bigint; password: string }>();
  private tokens = new Map<string, bigint>();
  readonly threads = new Map<bigint, StoredThread>();
  private nextUser = 17n;
  private nextThread = 5n;
  /** Message ids and the sync watermark: strictly increasing "microseconds". */
  private clock = 1_700_000_000_000_000n;

  readonly connector: Connector = (url, handlers) => {
    if (this.refuse !== undefined) {
      const why = this.refuse;
      queueMicrotask(() => handlers.onClose(why));
      return { send: () => {}, close: () => {} };
    }
    const conn = new FakeConn(this, url, handlers);
    this.conns.add(conn);
    this.opened.push(conn);
    queueMicrotask(() => handlers.onOpen());
    return {
      send: (bytes) => {
        const copy = bytes.slice();
        queueMicrotask(() => this.onBytes(conn, copy));
      },
      close: () => {
        conn.open = false;
        conn.clientClosed = true;
        this.conns.delete(conn);
      },
    };
  };

  private tick(): bigint {
    this.clock += 1n;
    return this.clock;
  }

  private onBytes(conn: FakeConn, bytes: Uint8Array): void {
    if (!conn.open) return;
    conn.decoder.push(bytes);
    for (let env = conn.decoder.next(); env !== undefined; env = conn.decoder.next()) {
      conn.received.push(env);
      if (this.intercept?.(conn, env.requestId, env.frame)) continue;
      this.answer(conn, env.requestId, env.frame);
    }
  }

  /** The default behaviour of the fake server for one request. */
  answer(conn: FakeConn, id: number, f: Frame): void {
    const err = (code: number, message: string) => conn.reply(id, frame("ErrorReply", { code, message }));
    switch (f.type) {
      case "Hello":
        return conn.reply(id, frame("Welcome", { version: VERSION, maxFrame: this.maxFrame, heartbeatSecs: this.heartbeatSecs, node: "n1" }));
      case "Ping":
        return conn.reply(id, frame("Pong", { nonce: f.nonce }));
      case "Register": {
        if (this.users.has(f.handle)) return err(ErrorCode.HandleTaken, "handle taken");
        const user = { id: this.nextUser++, password: f.password };
        this.users.set(f.handle, user);
        return this.authOk(conn, id, user.id, f.handle);
      }
      case "Login": {
        const user = this.users.get(f.handle);
        if (user === undefined || user.password !== f.password) return err(ErrorCode.BadCredentials, "wrong handle or password");
        return this.authOk(conn, id, user.id, f.handle);
      }
      case "Resume": {
        const user = this.tokens.get(hexOf(f.token));
        if (user === undefined) return err(ErrorCode.InvalidToken, "unknown token; log in again");
        return this.authOk(conn, id, user, this.handleOf(user));
      }
      case "Logout":
        conn.reply(id, frame("Done", {}));
        for (const [t, u] of this.tokens) if (u === conn.user) this.tokens.delete(t);
        return conn.drop();
      case "LookupUser": {
        const user = this.users.get(f.handle);
        if (user === undefined) return err(ErrorCode.UnknownUser, "no such user");
        return conn.reply(id, frame("User", { user: { id: user.id, handle: f.handle } }));
      }
      case "OpenDirect": {
        const me = conn.user!;
        for (const t of this.threads.values()) {
          const ids = t.thread.members.map((m) => m.user);
          if (t.thread.kind === ThreadKind.Direct && ids.includes(me) && ids.includes(f.peer)) {
            return conn.reply(id, frame("ThreadInfo", { thread: t.thread }));
          }
        }
        const thread: Thread = {
          id: this.nextThread++,
          kind: ThreadKind.Direct,
          name: "",
          members: [me, f.peer].map((user) => ({ user, role: Role.Member, delivered: 0n, read: 0n })),
          lastMsgId: 0n,
          muted: false,
          hidden: false,
          label: "",
        };
        this.threads.set(thread.id, { thread, messages: [], byClientId: new Map() });
        return conn.reply(id, frame("ThreadInfo", { thread }));
      }
      case "Send": {
        const t = this.threads.get(f.thread);
        if (t === undefined) return err(ErrorCode.UnknownThread, "no such thread");
        const key = `${conn.user}/${f.clientMsgId}`;
        const existing = t.byClientId.get(key);
        if (existing !== undefined) {
          return conn.reply(id, frame("Sent", { thread: f.thread, message: existing, clientMsgId: f.clientMsgId }));
        }
        const message: Message = {
          thread: f.thread,
          id: this.tick(),
          sender: conn.user!,
          clientMsgId: f.clientMsgId,
          kind: f.kind,
          recalled: false,
          body: f.body.slice(),
        };
        if (f.replyTo !== 0n && !t.messages.some((m) => m.id === f.replyTo)) {
          return err(ErrorCode.UnknownMessage, "reply_to is no message of this thread");
        }
        this.store(message);
        t.byClientId.set(key, message.id);
        if (f.replyTo !== 0n) this.extrasOf(t, message.id).replyTo = f.replyTo;
        conn.reply(id, frame("Sent", { thread: f.thread, message: message.id, clientMsgId: f.clientMsgId }));
        return this.pushToMembers(f.thread, frame("MessagePush", { message, replyTo: f.replyTo }), conn);
      }
      case "Edit":
      case "React": {
        const t = this.threads.get(f.thread);
        const target = t?.messages.find((m) => m.id === f.message);
        if (t === undefined || target === undefined) return err(ErrorCode.UnknownMessage, "no such message");
        const extras = this.extrasOf(t, target.id);
        const user = conn.user!;
        let event;
        if (f.type === "Edit") {
          if (target.sender !== user) return err(ErrorCode.NotSender, "only the sender may edit");
          target.body = f.body.slice();
          event = { event: SystemEventKind.Edited, text: "", body: target.body, reactions: [] };
        } else {
          if (f.reaction === "") extras.reactions.delete(user);
          else extras.reactions.set(user, f.reaction);
          event = { event: SystemEventKind.Reacted, text: f.reaction, body: new Uint8Array(0), reactions: counts(extras.reactions) };
        }
        const w = new Writer();
        SystemEventCodec.put(w, { ...event, actor: user, subject: target.id, users: [] }, "body");
        const system = this.store({
          thread: f.thread,
          id: this.tick(),
          sender: user,
          clientMsgId: 0n,
          kind: MessageKind.System,
          recalled: false,
          body: w.toBytes(),
        });
        if (f.type === "Edit") extras.editedAt = system.id;
        conn.reply(id, frame("Done", {}));
        return this.pushToMembers(f.thread, frame("MessagePush", { message: system, replyTo: 0n }));
      }
      case "Receipt": {
        conn.reply(id, frame("Done", {}));
        return this.pushToMembers(f.thread, frame("ReceiptPush", { thread: f.thread, user: conn.user!, kind: f.kind, upTo: f.upTo }), conn);
      }
      case "Typing":
        return this.pushToMembers(f.thread, frame("TypingPush", { thread: f.thread, user: conn.user!, active: f.active }), conn);
      case "Sync":
        return conn.reply(id, this.syncBatch(conn.user!, f));
      case "History": {
        const t = this.threads.get(f.thread);
        const messages = (t?.messages ?? []).filter((m) => f.anchor === 0n || m.id < f.anchor).reverse().slice(0, f.limit);
        const meta = t === undefined ? [] : this.metaOf(t, messages, conn.user!);
        return conn.reply(id, frame("Messages", { thread: f.thread, messages, more: false, meta }));
      }
      case "ContactList":
        return conn.reply(id, frame("Contacts", { users: [] }));
      default:
        return err(ErrorCode.InvalidArgument, `the fake server does not do ${f.type}`);
    }
  }

  private extrasOf(t: StoredThread, id: bigint): Extras {
    t.extras ??= new Map();
    let e = t.extras.get(id);
    if (e === undefined) {
      e = { replyTo: 0n, editedAt: 0n, reactions: new Map() };
      t.extras.set(id, e);
    }
    return e;
  }

  /** The MessageMeta of those of `messages` that reply, were edited or have reactions. */
  metaOf(t: StoredThread, messages: Message[], user: bigint): MessageMeta[] {
    const out: MessageMeta[] = [];
    for (const m of messages) {
      const e = t.extras?.get(m.id);
      if (e === undefined || (e.replyTo === 0n && e.editedAt === 0n && e.reactions.size === 0)) continue;
      out.push({ id: m.id, replyTo: e.replyTo, editedAt: e.editedAt, reactions: counts(e.reactions), mine: e.reactions.get(user) ?? "" });
    }
    return out;
  }

  /** Stores a message as if a client had sent it; returns it. */
  store(message: Message): Message {
    const t = this.threads.get(message.thread)!;
    t.messages.push(message);
    t.thread.lastMsgId = message.id;
    return message;
  }

  /** A message from `sender` stored now, as by another client (pushed to nobody). */
  storeText(thread: bigint, sender: bigint, text: string): Message {
    return this.store({
      thread,
      id: this.tick(),
      sender,
      clientMsgId: this.clock,
      kind: MessageKind.Text,
      recalled: false,
      body: new TextEncoder().encode(text),
    });
  }

  pushToMembers(thread: bigint, f: Frame, except?: FakeConn): void {
    const t = this.threads.get(thread);
    if (t === undefined) return;
    const members = new Set(t.thread.members.map((m) => m.user));
    for (const c of this.conns) {
      if (c !== except && c.user !== undefined && members.has(c.user)) c.reply(0, f);
    }
  }

  /**
   * One SYNC page: messages above `since` in threads of the user, ordered by (thread, id),
   * after the cursor, at most `limit`; the walk's watermark is the first page's.
   */
  syncBatch(user: bigint, f: Frame & { type: "Sync" }): Frame {
    const watermark = f.watermark === 0n ? this.clock : f.watermark;
    const all: Message[] = [];
    const changed: Thread[] = [];
    for (const t of [...this.threads.values()].sort((a, b) => (a.thread.id < b.thread.id ? -1 : 1))) {
      if (!t.thread.members.some((m) => m.user === user)) continue;
      const fresh = t.messages.filter((m) => m.id > f.since && m.id <= watermark);
      if (fresh.length > 0) changed.push(t.thread);
      all.push(...fresh);
    }
    const after = all.filter(
      (m) => m.thread > f.afterThread || (m.thread === f.afterThread && m.id > f.afterMessage),
    );
    const page = after.slice(0, f.limit);
    const more = after.length > page.length;
    const last = page.at(-1);
    const threads = changed.filter((t) => page.some((m) => m.thread === t.id));
    return frame("SyncBatch", {
      threads,
      messages: page,
      more,
      nextThread: more ? last!.thread : 0n,
      nextMessage: more ? last!.id : 0n,
      watermark,
      deleted: [],
      meta: page.flatMap((m) => this.metaOf(this.threads.get(m.thread)!, [m], user)),
      // One node: no per-node watermarks.
      vector: undefined,
    });
  }

  private authOk(conn: FakeConn, id: number, user: bigint, handle: string): void {
    const token = new Uint8Array(32);
    new DataView(token.buffer).setBigUint64(0, this.tick());
    new DataView(token.buffer).setBigUint64(8, user);
    this.tokens.set(hexOf(token), user);
    conn.user = user;
    conn.reply(id, frame("AuthOk", { user, device: 1, token, handle, watermark: this.clock }));
  }

  private handleOf(user: bigint): string {
    for (const [h, u] of this.users) if (u.id === user) return h;
    return "";
  }

  /** Forgets every token of `user`, as LOGOUT_ALL does. */
  revokeTokens(user: bigint): void {
    for (const [t, u] of this.tokens) if (u === user) this.tokens.delete(t);
  }
}
