/**
 * Decode errors, and the error codes carried by `ERROR_REPLY` frames
 * (protocol/src/error.rs, PROTOCOL.md section 8).
 */

/** The `code` of an `ERROR_REPLY` frame. */
export const ErrorCode = {
  Malformed: 1,
  UnknownFrame: 2,
  FrameTooLarge: 3,
  UnsupportedVersion: 4,
  HandshakeRequired: 5,
  NotAuthenticated: 6,
  HandshakeTimeout: 7,
  HeartbeatTimeout: 8,
  SlowConsumer: 9,
  RateLimited: 10,
  ServerFull: 11,
  ShuttingDown: 12,
  AlreadyAuthenticated: 13,
  SessionRevoked: 14,
  /** The server takes encrypted connections only (protocol/NOISE.md); it closes. */
  EncryptionRequired: 15,
  HandleTaken: 20,
  BadCredentials: 21,
  InvalidToken: 22,
  LoginThrottled: 23,
  InvalidHandle: 24,
  WeakPassword: 25,
  TooManyDevices: 26,
  UnknownThread: 40,
  NotMember: 41,
  NotAdmin: 42,
  GroupFull: 43,
  BodyTooLarge: 44,
  UnknownUser: 45,
  NotContact: 46,
  RecallWindowExpired: 47,
  NotSender: 48,
  UnknownMessage: 49,
  InvalidArgument: 50,
  NotAGroup: 51,
  TooManyContacts: 52,
  TooManyDeleted: 53,
  MessageRecalled: 54,
  EditWindowExpired: 55,
  InvalidReaction: 56,
  TooManyReactions: 57,
  UnknownMedia: 60,
  MediaTooLarge: 61,
  BadOffset: 62,
  TooManyUploads: 63,
  MediaQuotaExceeded: 64,
  MediaHashMismatch: 65,
  Forbidden: 70,
  WrongNode: 71,
  /** A node of the cluster the request needs is down: retry later with backoff. */
  Unavailable: 72,
  /** The device (10) or user (20) has as many push registrations as it may: unregister one. */
  TooManyPushers: 80,
  Internal: 90,
} as const;

export type ErrorCodeName = keyof typeof ErrorCode;
export type ErrorCode = (typeof ErrorCode)[ErrorCodeName];

const NAMES = new Map<number, ErrorCodeName>(
  (Object.keys(ErrorCode) as ErrorCodeName[]).map((name) => [ErrorCode[name], name]),
);

/** The code's name (`NotMember`), or undefined for a code this library does not know. */
export function errorCodeName(code: number): ErrorCodeName | undefined {
  return NAMES.get(code);
}

/** The codes after which the server closes the connection (`ErrorCode::closes_connection`). */
const CLOSING: ReadonlySet<number> = new Set<number>([
  ErrorCode.Malformed,
  ErrorCode.UnknownFrame,
  ErrorCode.FrameTooLarge,
  ErrorCode.UnsupportedVersion,
  ErrorCode.HandshakeRequired,
  ErrorCode.NotAuthenticated,
  ErrorCode.HandshakeTimeout,
  ErrorCode.HeartbeatTimeout,
  ErrorCode.SlowConsumer,
  ErrorCode.ServerFull,
  ErrorCode.ShuttingDown,
  ErrorCode.SessionRevoked,
  ErrorCode.EncryptionRequired,
  ErrorCode.WrongNode,
]);

/** Whether the server closes the connection after an ERROR_REPLY with `code`. */
export function closesConnection(code: number): boolean {
  return CLOSING.has(code);
}

/**
 * The retry hint at the end of an ERROR_REPLY message (PROTOCOL.md section 8, "Retry hint"):
 * `N` of a trailing `[retry_after_secs=N]`, or undefined when there is none. The same reading
 * as `courier_protocol::retry_after_secs`.
 */
export function retryAfterSecs(message: string): number | undefined {
  const m = /\[retry_after_secs=(\d{1,10})\]$/.exec(message.trimEnd());
  if (m === null) return undefined;
  const n = Number(m[1]);
  return n <= 0xffff_ffff ? n : undefined;
}

/** Whether `code` is one this library knows. */
export function isKnownErrorCode(code: number): code is ErrorCode {
  return NAMES.has(code);
}

/** What kind of decode failure: the same variants as `protocol::Error`. */
export type DecodeErrorKind =
  | { kind: "FrameTooLarge"; len: number; max: number }
  | { kind: "FrameTooShort"; len: number }
  | { kind: "UnknownFrameType"; code: number }
  | { kind: "Truncated"; field: string }
  | { kind: "InvalidUtf8"; field: string }
  | { kind: "InvalidValue"; field: string; value: number };

function describe(e: DecodeErrorKind): string {
  switch (e.kind) {
    case "FrameTooLarge":
      return `frame length ${e.len} exceeds the limit of ${e.max} bytes`;
    case "FrameTooShort":
      return `frame length ${e.len} is shorter than the 5-byte frame header`;
    case "UnknownFrameType":
      return `unknown frame type 0x${e.code.toString(16).padStart(2, "0")}`;
    case "Truncated":
      return `frame ends inside field ${e.field}`;
    case "InvalidUtf8":
      return `field ${e.field} is not valid UTF-8`;
    case "InvalidValue":
      return `field ${e.field} has invalid value ${e.value}`;
  }
}

/**
 * Bytes that do not decode into a frame. Fatal for the connection: the stream is no longer
 * known to be aligned on frames. The message is the same sentence the Rust crate gives.
 */
export class DecodeError extends Error {
  readonly detail: DecodeErrorKind;

  constructor(detail: DecodeErrorKind) {
    super(describe(detail));
    this.name = "DecodeError";
    this.detail = detail;
  }

  /** The code a server answers this error with. */
  get code(): ErrorCode {
    switch (this.detail.kind) {
      case "FrameTooLarge":
        return ErrorCode.FrameTooLarge;
      case "UnknownFrameType":
        return ErrorCode.UnknownFrame;
      default:
        return ErrorCode.Malformed;
    }
  }
}

/** A value that cannot be put on the wire (a number out of its field's range). */
export class EncodeError extends Error {
  constructor(field: string, why: string) {
    super(`field ${field} cannot be encoded: ${why}`);
    this.name = "EncodeError";
  }
}
