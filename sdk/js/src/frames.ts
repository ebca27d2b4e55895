/**
 * Every frame of protocol version 1 (PROTOCOL.md sections 6 and 7, protocol/src/frame.rs),
 * with its type code and body layout.
 *
 * Codes 0x01..=0x7F are client requests, 0x80..=0xBF server responses, 0xC0..=0xFF server
 * pushes (sent with request id 0). A frame is a plain object tagged by `type`:
 * `{ type: "Send", thread: 5n, clientMsgId: 901n, kind: MessageKind.Text, body }`.
 * Field names are the Rust names in camelCase; ids and other u64s are `bigint`.
 */

import { DecodeError } from "./errors.js";
import {
  bool,
  bytes,
  enumOf,
  list,
  opt,
  Reader,
  str,
  struct,
  tail,
  u16,
  u32,
  u64,
  type Codec,
  type Infer,
  type Writer,
} from "./wire.js";

// ---- Enums: the values are the wire codes ----

/** What a message body holds. Only `System` bodies are written by the server. */
export const MessageKind = { Text: 0, Media: 1, System: 2 } as const;
export type MessageKind = (typeof MessageKind)[keyof typeof MessageKind];
export const ThreadKind = { Direct: 1, Group: 2 } as const;
export type ThreadKind = (typeof ThreadKind)[keyof typeof ThreadKind];
export const Role = { Member: 0, Admin: 1 } as const;
export type Role = (typeof Role)[keyof typeof Role];
/** The second and third tick. */
export const ReceiptKind = { Delivered: 1, Read: 2 } as const;
export type ReceiptKind = (typeof ReceiptKind)[keyof typeof ReceiptKind];
/** `Backward`: older than the anchor, newest first. `Forward`: newer, oldest first. */
export const Direction = { Backward: 0, Forward: 1 } as const;
export type Direction = (typeof Direction)[keyof typeof Direction];
/** The event a `System` message records; its body is a {@link SystemEvent}. */
export const SystemEventKind = {
  Created: 1,
  MemberAdded: 2,
  MemberRemoved: 3,
  MemberLeft: 4,
  Renamed: 5,
  Recalled: 6,
  /** The sender edited message `subject`; `body` is its new body. */
  Edited: 7,
  /** `actor` reacted to message `subject` with `text` (empty: removed theirs); `reactions`
   * are the message's counts after the change. */
  Reacted: 8,
} as const;
export type SystemEventKind = (typeof SystemEventKind)[keyof typeof SystemEventKind];

const messageKind = enumOf("MessageKind", MessageKind);
const threadKind = enumOf("ThreadKind", ThreadKind);
const role = enumOf("Role", Role);
const receiptKind = enumOf("ReceiptKind", ReceiptKind);
const direction = enumOf("Direction", Direction);
const systemEventKind = enumOf("SystemEventKind", SystemEventKind);

// ---- Shared structures (section 6) ----

/** One stored message, as pushed, returned by history and by sync. */
export const MessageCodec = struct("Message", {
  thread: u64,
  /** Unique and increasing within the thread: microseconds since the epoch on the server. */
  id: u64,
  sender: u64,
  /** The sender's own id for this message, echoed so its devices can match it. */
  clientMsgId: u64,
  kind: messageKind,
  /** The sender recalled it; the body is then empty (a tombstone). */
  recalled: bool,
  body: bytes,
});
export type Message = Infer<typeof MessageCodec>;

export const MemberCodec = struct("Member", {
  user: u64,
  role,
  /** Everything up to this message id reached one of the member's devices. */
  delivered: u64,
  /** Everything up to this message id was read by the member. */
  read: u64,
});
export type Member = Infer<typeof MemberCodec>;

/** A thread in full: shared state, members with receipt cursors, the caller's own state. */
export const ThreadCodec = struct("Thread", {
  id: u64,
  kind: threadKind,
  name: str,
  members: list(MemberCodec),
  lastMsgId: u64,
  muted: bool,
  hidden: bool,
  label: str,
});
export type Thread = Infer<typeof ThreadCodec>;

/** One row of the thread list. */
export const ThreadSummaryCodec = struct("ThreadSummary", {
  id: u64,
  kind: threadKind,
  name: str,
  /** For a direct thread, the other member; 0n for a group. */
  peer: u64,
  memberCount: u16,
  lastMsgId: u64,
  unread: u32,
  muted: bool,
  hidden: bool,
  label: str,
  lastMessage: opt(MessageCodec),
});
export type ThreadSummary = Infer<typeof ThreadSummaryCodec>;

export const UserInfoCodec = struct("UserInfo", { id: u64, handle: str });
export type UserInfo = Infer<typeof UserInfoCodec>;

export const PresenceCodec = struct("Presence", {
  user: u64,
  online: bool,
  /** Microseconds since the epoch: last online; while online, the time of the answer. */
  lastSeen: u64,
});
export type Presence = Infer<typeof PresenceCodec>;

export const MessageRefCodec = struct("MessageRef", { thread: u64, id: u64 });
export type MessageRef = Infer<typeof MessageRefCodec>;

/**
 * `Sync.vector`, for a cluster: message ids are each thread's owner node's clock, so each node
 * (by index in the sorted member list) has its own watermark.
 */
export const SyncVectorCodec = struct("SyncVector", {
  /** Node index -> the last completed sync's watermark there; empty: `since` for every node. */
  since: list(u64),
  /** The walk's watermarks as the previous SyncBatch gave them; empty on a first page. */
  watermarks: list(u64),
  /** The node this page continues on (`BatchVector.nextNode`). */
  afterNode: u16,
});
export type SyncVector = Infer<typeof SyncVectorCodec>;

/** `SyncBatch.vector`: the walk's per-node watermarks (0n: not reached yet) and next node. */
export const BatchVectorCodec = struct("BatchVector", { watermarks: list(u64), nextNode: u16 });
export type BatchVector = Infer<typeof BatchVectorCodec>;

export const StatCodec = struct("Stat", { name: str, value: u64 });
export type Stat = Infer<typeof StatCodec>;

/** How many members reacted to a message with one reaction. */
export const ReactionCountCodec = struct("ReactionCount", {
  /** 1 to 32 bytes of UTF-8, e.g. an emoji. */
  reaction: str,
  count: u32,
});
export type ReactionCount = Infer<typeof ReactionCountCodec>;

/**
 * What a message carries besides its {@link Message} fields, in `Messages.meta` and
 * `SyncBatch.meta`: listed only for messages that reply, were edited or have reactions.
 */
export const MessageMetaCodec = struct("MessageMeta", {
  /** The message described (in the same frame's `messages`). */
  id: u64,
  /** The message of the same thread it replies to, 0n for none. */
  replyTo: u64,
  /** The id of the EDITED system message of its last edit, 0n if never edited. */
  editedAt: u64,
  /** Reaction counts, most frequent first. */
  reactions: list(ReactionCountCodec),
  /** The asking user's own reaction, empty for none. */
  mine: str,
});
export type MessageMeta = Infer<typeof MessageMetaCodec>;

const systemEventFixed = struct("SystemEvent", {
  event: systemEventKind,
  actor: u64,
  subject: u64,
  text: str,
});
const userList = list(u64);
const reactionList = list(ReactionCountCodec);

/** The body of a `System` message. */
export interface SystemEvent {
  event: SystemEventKind;
  /** Who did it. */
  actor: bigint;
  /** The user added (the first), removed or who left; the recalled message id; else 0n. */
  subject: bigint;
  /** The group's name for `Created` and `Renamed`, empty otherwise. */
  text: string;
  /** For `MemberAdded`, every user added by the one request; empty otherwise. */
  users: bigint[];
  /** For `Edited`, the message's new body; empty otherwise. */
  body: Uint8Array;
  /** For `Reacted`, the message's reaction counts after the change; empty otherwise. */
  reactions: ReactionCount[];
}

/**
 * `users`, `body` and `reactions` were appended to the layout: a body that ends before one of
 * them (written by an earlier server) decodes with it, and those after it, empty.
 */
export const SystemEventCodec: Codec<SystemEvent> = {
  shape: {
    kind: "struct",
    name: "SystemEvent",
    fields: [
      ...(systemEventFixed.shape as { fields: ReadonlyArray<readonly [string, Codec<unknown>]> })
        .fields,
      ["users", userList as Codec<unknown>],
      ["body", bytes as Codec<unknown>],
      ["reactions", reactionList as Codec<unknown>],
    ],
  },
  put: (w, v) => {
    systemEventFixed.put(w, v, "SystemEvent");
    userList.put(w, v.users, "SystemEvent.users");
    bytes.put(w, v.body, "SystemEvent.body");
    reactionList.put(w, v.reactions, "SystemEvent.reactions");
  },
  get: (r) => {
    const fixed = systemEventFixed.get(r, "SystemEvent");
    const users = r.remaining() > 0 ? userList.get(r, "SystemEvent.users") : [];
    const body = r.remaining() > 0 ? bytes.get(r, "SystemEvent.body") : new Uint8Array(0);
    const reactions = r.remaining() > 0 ? reactionList.get(r, "SystemEvent.reactions") : [];
    return { ...fixed, users, body, reactions };
  },
};

/** Decodes the body of a `System` message. Throws {@link DecodeError} if it is not one. */
export function decodeSystemEvent(body: Uint8Array): SystemEvent {
  return SystemEventCodec.get(new Reader(body), "SystemEvent");
}

// ---- Frames (section 7) ----

const FRAME_DEFS = {
  // Session: handshake, accounts, liveness (client -> server)
  Hello: [0x01, { version: u16, client: str }],
  Register: [0x02, { handle: str, password: str, device: str }],
  Login: [0x03, { handle: str, password: str, device: str }],
  Resume: [0x04, { token: bytes }],
  Logout: [0x05, {}],
  LogoutAll: [0x06, {}],
  Ping: [0x07, { nonce: u64 }],
  // Threads and groups
  OpenDirect: [0x10, { peer: u64 }],
  CreateGroup: [0x11, { name: str, members: list(u64) }],
  AddMembers: [0x12, { thread: u64, members: list(u64) }],
  RemoveMember: [0x13, { thread: u64, user: u64 }],
  LeaveGroup: [0x14, { thread: u64 }],
  RenameGroup: [0x15, { thread: u64, name: str }],
  ListThreads: [0x16, { beforeMsgId: u64, beforeThread: u64, limit: u16 }],
  GetThread: [0x17, { thread: u64 }],
  SetThreadState: [0x18, { thread: u64, muted: bool, hidden: bool, label: str }],
  // Messages, receipts, sync
  /** `replyTo`: a message of the same thread this one replies to, 0n for none. */
  Send: [0x20, { thread: u64, clientMsgId: u64, kind: messageKind, body: bytes, replyTo: u64 }],
  History: [0x21, { thread: u64, anchor: u64, direction, limit: u16 }],
  Receipt: [0x22, { thread: u64, kind: receiptKind, upTo: u64 }],
  Recall: [0x23, { thread: u64, message: u64 }],
  DeleteForMe: [0x24, { thread: u64, message: u64 }],
  Readers: [0x25, { thread: u64, message: u64 }],
  Sync: [
    0x26,
    {
      since: u64,
      afterThread: u64,
      afterMessage: u64,
      limit: u16,
      watermark: u64,
      /** A cluster only (left out, `undefined`, for a single node). */
      vector: tail(SyncVectorCodec),
    },
  ],
  Typing: [0x27, { thread: u64, active: bool }],
  /** The sender's new body for their message (within the edit window). */
  Edit: [0x28, { thread: u64, message: u64, body: bytes }],
  /** Sets the caller's one reaction to a message; an empty `reaction` removes theirs. */
  React: [0x29, { thread: u64, message: u64, reaction: str }],
  // Contacts and presence
  ContactAdd: [0x30, { user: u64 }],
  ContactRemove: [0x31, { user: u64 }],
  ContactList: [0x32, {}],
  LookupUser: [0x33, { handle: str }],
  PresenceSubscribe: [0x34, { users: list(u64) }],
  PresenceQuery: [0x35, { users: list(u64) }],
  GetUsers: [0x36, { users: list(u64) }],
  // Media, in chunks
  MediaBegin: [0x40, { totalLen: u64, mime: str, hash: bytes }],
  MediaChunk: [0x41, { upload: u64, offset: u64, data: bytes }],
  MediaCommit: [0x42, { upload: u64 }],
  MediaGet: [0x43, { media: bytes, offset: u64, maxLen: u32, thread: u64 }],
  // Administration
  AdminStats: [0x50, {}],
  // Push notifications (for this device while it is offline)
  RegisterPush: [0x70, { appId: str, pushkey: str, platform: str, lang: str, data: str }],
  UnregisterPush: [0x71, { appId: str, pushkey: str }],
  // Responses (server -> client, same request id as the request)
  Done: [0x80, {}],
  ErrorReply: [0x81, { code: u16, message: str }],
  Welcome: [0x82, { version: u16, maxFrame: u32, heartbeatSecs: u16, node: str }],
  AuthOk: [0x83, { user: u64, device: u32, token: bytes, handle: str, watermark: u64 }],
  ThreadInfo: [0x84, { thread: ThreadCodec }],
  ThreadList: [0x85, { threads: list(ThreadSummaryCodec), more: bool }],
  Sent: [0x86, { thread: u64, message: u64, clientMsgId: u64 }],
  /** `meta`: replies, edits and reactions of those `messages` that have any. */
  Messages: [0x87, { thread: u64, messages: list(MessageCodec), more: bool, meta: list(MessageMetaCodec) }],
  SyncBatch: [
    0x88,
    {
      threads: list(ThreadCodec),
      messages: list(MessageCodec),
      more: bool,
      nextThread: u64,
      nextMessage: u64,
      watermark: u64,
      deleted: list(MessageRefCodec),
      /** Replies, edits and reactions of those `messages` that have any. */
      meta: list(MessageMetaCodec),
      /** A cluster only (`undefined` from a single node). */
      vector: tail(BatchVectorCodec),
    },
  ],
  ReadersList: [0x89, { thread: u64, message: u64, delivered: list(u64), read: list(u64) }],
  Contacts: [0x8a, { users: list(UserInfoCodec) }],
  User: [0x8b, { user: UserInfoCodec }],
  PresenceList: [0x8c, { entries: list(PresenceCodec) }],
  Pong: [0x8d, { nonce: u64 }],
  MediaUpload: [0x8e, { upload: u64, chunkMax: u32, offset: u64 }],
  MediaRef: [0x8f, { media: bytes, totalLen: u64 }],
  MediaData: [0x90, { media: bytes, totalLen: u64, offset: u64, data: bytes }],
  Stats: [0x91, { entries: list(StatCodec) }],
  Users: [0x92, { users: list(UserInfoCodec) }],
  // Pushes (server -> client, request id 0)
  /** `replyTo`: the message this one replies to, 0n for none. */
  MessagePush: [0xc0, { message: MessageCodec, replyTo: u64 }],
  ReceiptPush: [0xc1, { thread: u64, user: u64, kind: receiptKind, upTo: u64 }],
  PresencePush: [0xc2, { presence: PresenceCodec }],
  TypingPush: [0xc3, { thread: u64, user: u64, active: bool }],
  /**
   * The user lives on another node: reconnect to `addr` and resume. The server closes.
   * `key`: that node's static Noise public key (32 bytes) to pin there; empty on a plaintext
   * cluster.
   */
  Redirect: [0xc4, { node: str, addr: str, key: bytes }],
} as const satisfies Record<string, readonly [number, Record<string, Codec<any>>]>;

type Defs = typeof FRAME_DEFS;
/** The name of a frame type: `"Hello"`, `"MessagePush"`, … */
export type FrameName = keyof Defs;
type BodyOf<K extends FrameName> = { -readonly [F in keyof Defs[K][1]]: Infer<Defs[K][1][F]> };
/** The frame named `K`: its `type` tag and its fields. */
export type FrameOf<K extends FrameName> = { type: K } & BodyOf<K>;
/** One frame of any type. */
export type Frame = { [K in FrameName]: FrameOf<K> }[FrameName];

// Named frame types for the ones callers handle most.
export type Welcome = FrameOf<"Welcome">;
export type AuthOk = FrameOf<"AuthOk">;
export type ErrorReply = FrameOf<"ErrorReply">;
export type Sent = FrameOf<"Sent">;
export type Messages = FrameOf<"Messages">;
export type SyncBatch = FrameOf<"SyncBatch">;
export type ThreadList = FrameOf<"ThreadList">;
export type ReadersList = FrameOf<"ReadersList">;
export type MediaUpload = FrameOf<"MediaUpload">;
export type MediaRef = FrameOf<"MediaRef">;
export type MediaData = FrameOf<"MediaData">;

interface FrameType {
  readonly name: FrameName;
  readonly code: number;
  readonly body: Codec<Record<string, unknown>>;
}

const BY_NAME = new Map<FrameName, FrameType>();
const BY_CODE: (FrameType | undefined)[] = new Array(256);
for (const name of Object.keys(FRAME_DEFS) as FrameName[]) {
  const [code, fields] = FRAME_DEFS[name];
  const type: FrameType = {
    name,
    code,
    body: struct(name, fields as Record<string, Codec<any>>) as Codec<Record<string, unknown>>,
  };
  BY_NAME.set(name, type);
  BY_CODE[code] = type;
}

/** Every frame type as `[code, name]`, in code order. */
export const FRAME_CODES: ReadonlyArray<readonly [number, FrameName]> = [...BY_NAME.values()]
  .map((t) => [t.code, t.name] as const)
  .sort((a, b) => a[0] - b[0]);

/** The type code of a frame name. */
export function frameCode(name: FrameName): number {
  return BY_NAME.get(name)!.code;
}

/** The frame name of a type code, or undefined for an unassigned one. */
export function frameName(code: number): FrameName | undefined {
  return BY_CODE[code]?.name;
}

/** The body codec of a frame type (for printing and tests). */
export function frameBodyCodec(name: FrameName): Codec<Record<string, unknown>> {
  return BY_NAME.get(name)!.body;
}

/** Appends the body of `frame` to `w`. */
export function putBody(w: Writer, frame: Frame): void {
  const type = BY_NAME.get(frame.type);
  if (type === undefined) {
    throw new TypeError(`${String(frame.type)} is not a Courier frame type`);
  }
  type.body.put(w, frame as unknown as Record<string, unknown>, frame.type);
}

/**
 * Decodes a body of type `code`. Trailing bytes after the known fields are ignored: a later
 * protocol version may append fields to a body.
 */
export function decodeBody(code: number, body: Uint8Array): Frame {
  const type = BY_CODE[code];
  if (type === undefined) throw new DecodeError({ kind: "UnknownFrameType", code });
  const fields = type.body.get(new Reader(body), type.name);
  return { type: type.name, ...fields } as Frame;
}

/** Builds a frame; `frame("Ping", { nonce: 1n })`. */
export function frame<K extends FrameName>(type: K, body: BodyOf<K>): FrameOf<K> {
  return { type, ...body } as FrameOf<K>;
}
