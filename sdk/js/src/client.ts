/**
 * The client: the typed requests (client/src/api/) on top of {@link ClientCore} (connection,
 * authentication, events, reconnect), with the Rust client's behaviour, over any Connector
 * (WebSocket by default).
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

import { ClientCore } from "./client_core.js";
import { isConnectionError } from "./client_error.js";
import { resolveConfig, type ClientConfig } from "./config.js";
import {
  frame,
  MessageKind,
  type Direction,
  type MediaData,
  type MediaRef,
  type MediaUpload,
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
} from "./frames.js";
import { syncPages, type SyncResult } from "./sync.js";

export type { ClientConfig } from "./config.js";
export type { ClientEvents } from "./events.js";
export type { SyncResult } from "./sync.js";

/** Page size of listAllThreads. */
const THREAD_PAGE = 200;
/** Most ids one GET_USERS may carry; users() splits longer lists. */
const GET_USERS_MAX = 1000;
/** Room left in a frame for the header and the fixed fields around media data. */
const FRAME_OVERHEAD = 128;

/** The last id {@link newClientMsgId} returned, so ids increase within this process. */
let lastClientMsgId = 0n;

/**
 * A fresh, non-zero id for a message, chosen by the sender so a retry can be recognised: the
 * wall clock in milliseconds in the high 42 bits and 22 random bits, increasing within this
 * process even if the clock steps back. Ids that increase per sender and thread let the server
 * take a SEND as new without a dedupe lookup (PROTOCOL.md, `SEND`); the random bits keep two
 * devices of one user apart within a millisecond.
 */
export function newClientMsgId(): bigint {
  const raw = new Uint8Array(4);
  const c = (globalThis as { crypto?: { getRandomValues(a: Uint8Array): Uint8Array } }).crypto;
  if (c !== undefined) {
    c.getRandomValues(raw);
  } else {
    for (let i = 0; i < 4; i++) raw[i] = Math.floor(Math.random() * 256);
  }
  const random = BigInt(new DataView(raw.buffer).getUint32(0) & 0x3fffff);
  const fresh = (BigInt(Date.now()) << 22n) | random;
  const next = (lastClientMsgId + 1n) & 0xffffffffffffffffn;
  let id = fresh > next ? fresh : next;
  if (id === 0n) id = 1n;
  lastClientMsgId = id;
  return id;
}

const utf8 = new TextEncoder();

/**
 * A Courier client. Requests return promises matched to replies by request id, so any number
 * may be in flight. Pushes come out as events: `client.on("message", fn)`.
 */
export class Client extends ClientCore {
  /**
   * Opens a connection to `url` (e.g. `ws://host:port/`) and performs the HELLO/WELCOME
   * handshake. Then log in with register, login, resume or resumeSaved.
   */
  static async connect(url: string, config: ClientConfig = {}): Promise<Client> {
    const client = new Client(url, resolveConfig(config));
    await client.openFirst();
    return client;
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
    return this.sendReplyWithId(thread, clientMsgId, kind, body, 0n);
  }

  /**
   * Sends with a caller-chosen clientMsgId, replying to `replyTo` (a message of the same
   * thread; 0n: to nothing). Sending the same id again in the same thread returns the original
   * SENT and stores nothing.
   */
  sendReplyWithId(
    thread: bigint,
    clientMsgId: bigint,
    kind: MessageKind,
    body: Uint8Array | string,
    replyTo: bigint,
  ): Promise<Sent> {
    const bytes = typeof body === "string" ? utf8.encode(body) : body;
    return this.expect(frame("Send", { thread, clientMsgId, kind, body: bytes, replyTo }), "Sent");
  }

  /**
   * Sends a text message that replies to (quotes) `replyTo`, a message of the same thread.
   * Members get it with a "messageMeta" event naming `replyTo` right after the message.
   */
  sendReply(thread: bigint, replyTo: bigint, text: string): Promise<Sent> {
    return this.sendReplyWithId(thread, newClientMsgId(), MessageKind.Text, text, replyTo);
  }

  /**
   * Replaces the body of one of the caller's messages (within the edit window,
   * EDIT_WINDOW_EXPIRED after it). Members' devices get an EDITED system message; history
   * shows the new body, marked edited (`MessageMeta.editedAt`).
   */
  edit(thread: bigint, message: bigint, body: Uint8Array | string): Promise<void> {
    const bytes = typeof body === "string" ? utf8.encode(body) : body;
    return this.done(frame("Edit", { thread, message, body: bytes }));
  }

  /**
   * Sets the caller's one reaction to a message (1 to 32 bytes, e.g. an emoji); an empty
   * `reaction` removes it. Members' devices get a REACTED system message with the new counts.
   */
  react(thread: bigint, message: bigint, reaction: string): Promise<void> {
    return this.done(frame("React", { thread, message, reaction }));
  }

  /**
   * Sends, and when the connection fails before SENT arrives, waits for the reconnect and
   * retries with the same clientMsgId until `giveUpAfterMs` has passed. The server
   * deduplicates, so the message is stored once however many attempts reached it.
   * `replyTo`: the message of the same thread this one replies to (0n: none).
   */
  async sendWithRetry(
    thread: bigint,
    kind: MessageKind,
    body: Uint8Array | string,
    giveUpAfterMs: number,
    clientMsgId: bigint = newClientMsgId(),
    replyTo: bigint = 0n,
  ): Promise<Sent> {
    const clock = this.config.clock;
    const deadline = clock.now() + giveUpAfterMs;
    for (;;) {
      try {
        return await this.sendReplyWithId(thread, clientMsgId, kind, body, replyTo);
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
    const result = await syncPages(
      this.current(),
      since,
      this.config.syncPage,
      this.config.requestTimeoutMs,
      this.vectorFor(since),
    );
    this.recordSync(result, false, []);
    return result;
  }

  // ---- Push notifications ----

  /**
   * Registers a push key of this device with the server's push gateway for `appId`
   * (`platform`: apns, fcm, web, …; `data`: a JSON object for the gateway, "" for none).
   * Registering the same key again replaces it; TOO_MANY_PUSHERS past 10 per device or 20
   * per user. It goes when this device logs out or logs in again.
   */
  registerPush(appId: string, pushkey: string, platform: string, lang = "", data = ""): Promise<void> {
    return this.done(frame("RegisterPush", { appId, pushkey, platform, lang, data }));
  }

  /** Removes the user's registration of (`appId`, `pushkey`); unknown ones are ignored. */
  unregisterPush(appId: string, pushkey: string): Promise<void> {
    return this.done(frame("UnregisterPush", { appId, pushkey }));
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

  /**
   * Starts, or resumes, the upload of `totalLen` bytes whose BLAKE3 hash (32 bytes) is `hash`:
   * the hash is the media id. `MediaUpload.offset` is where to continue (`totalLen`: nothing
   * is left to send, commit).
   */
  mediaBegin(totalLen: bigint, mime: string, hash: Uint8Array): Promise<MediaUpload> {
    return this.expect(frame("MediaBegin", { totalLen, mime, hash }), "MediaUpload");
  }

  /** Sends one chunk; `offset` must be the number of bytes sent so far. */
  mediaChunk(upload: bigint, offset: bigint, data: Uint8Array): Promise<void> {
    return this.done(frame("MediaChunk", { upload, offset, data }));
  }

  /** Finishes an upload; the media id goes into a Media-kind message. */
  mediaCommit(upload: bigint): Promise<MediaRef> {
    return this.expect(frame("MediaCommit", { upload }), "MediaRef");
  }

  /**
   * Reads up to `maxLen` bytes of a media object from `offset`. `thread`: where the caller saw
   * it (the message's thread; 0n when unknown), which the server checks first.
   */
  mediaGet(media: Uint8Array, offset: bigint, maxLen: number, thread = 0n): Promise<MediaData> {
    return this.expect(frame("MediaGet", { media, offset, maxLen, thread }), "MediaData");
  }

  /**
   * Uploads `data` whole: begin (or resume where the server is), chunks no larger than the
   * server allows, commit. `hash` is the BLAKE3 hash of `data` (this library has no hash
   * function of its own; e.g. `blake3` from `@noble/hashes`).
   */
  async uploadMedia(mime: string, data: Uint8Array, hash: Uint8Array): Promise<MediaRef> {
    const upload = await this.mediaBegin(BigInt(data.length), mime, hash);
    const room = Math.max(this.current().maxFrame() - FRAME_OVERHEAD, 1);
    const chunk = Math.max(Math.min(upload.chunkMax, room), 1);
    for (let offset = Number(upload.offset); offset < data.length; offset += chunk) {
      await this.mediaChunk(upload.upload, BigInt(offset), data.subarray(offset, offset + chunk));
    }
    return this.mediaCommit(upload.upload);
  }

  /** Downloads a media object whole (`thread`: where it was seen, 0n when unknown). */
  async downloadMedia(media: Uint8Array, thread = 0n): Promise<Uint8Array> {
    const room = Math.max(this.current().maxFrame() - FRAME_OVERHEAD, 1);
    const parts: Uint8Array[] = [];
    let got = 0;
    for (;;) {
      const part = await this.mediaGet(media, BigInt(got), room, thread);
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
