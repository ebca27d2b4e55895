/** What the client tells its user without being asked (client/src/event.rs). */

import type { ClientError } from "./client_error.js";
import type { ErrorCode } from "./errors.js";
import type { Message, MessageMeta, Presence, ReceiptKind, Thread } from "./frames.js";

/** The client's events and what each carries; subscribe with `client.on(name, fn)`. */
export type ClientEvents = {
  /** A new message, pushed or recovered by sync after a reconnect; each (thread, id) once. */
  message: Message;
  /**
   * What a message carries besides its fields (the message it replies to, its last edit, its
   * reactions). Comes right after the "message" event of that message: after a pushed reply
   * (only `replyTo` set), and after a message recovered by sync that has any (from
   * `SyncBatch.meta`). Later edits and reactions come as EDITED and REACTED system messages
   * (decode their body with `decodeSystemEvent`).
   */
  messageMeta: { thread: bigint; meta: MessageMeta };
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
  /**
   * The session is over for good (logout, token revoked, close, or a reconnect refused
   * because the server no longer holds the pinned key: `error` says so). No events follow.
   */
  sessionEnded: { reason: ErrorCode | undefined; error?: ClientError };
};
