/**
 * Framing: a length prefix, then the frame (PROTOCOL.md section 1, protocol/src/codec.rs).
 *
 * ```text
 *  0               4       5               9
 * +---------------+-------+---------------+--------------------------+
 * |  len (u32 BE) | type  | request id    | body (len - 5 bytes)     |
 * |               | (u8)  | (u32 BE)      |                          |
 * +---------------+-------+---------------+--------------------------+
 * ```
 *
 * `len` counts the bytes after itself. It is checked against the limit before any of the body
 * is buffered; the decoder returns `undefined` until a whole frame is there.
 */

import { DecodeError } from "./errors.js";
import { decodeBody, frameCode, putBody, type Frame } from "./frames.js";
import { Writer } from "./wire.js";

/** The protocol version this library speaks. */
export const VERSION = 1;
/** Bytes of the length prefix. */
export const LEN_BYTES = 4;
/** Bytes of type code and request id, counted in `len`. */
export const HEADER_BYTES = 5;
/** The largest `len` any peer may send or accept. */
export const MAX_FRAME_LEN = 1 << 20;
/** The default limit, and the one a server announces in WELCOME unless configured. */
export const DEFAULT_MAX_FRAME_LEN = 64 * 1024;

/** A frame with its request id: the request's own id, its response's, or 0 for a push. */
export interface Envelope {
  requestId: number;
  frame: Frame;
}

/** Appends one frame to `w`; returns the frame's length on the wire (prefix included). */
export function encodeInto(w: Writer, requestId: number, frame: Frame): number {
  const start = w.length;
  w.u32(0);
  w.u8(frameCode(frame.type));
  w.u32(requestId >>> 0);
  putBody(w, frame);
  const total = w.length - start;
  w.patchU32(start, total - LEN_BYTES);
  return total;
}

/** One frame as bytes. */
export function encode(requestId: number, frame: Frame): Uint8Array {
  const w = new Writer(64);
  encodeInto(w, requestId, frame);
  return w.toBytes();
}

/**
 * The `len` of the frame at the front of `buf` if its prefix is there; checks the limit.
 * `undefined` means "need more bytes".
 */
export function peekLen(buf: Uint8Array, max: number): number | undefined {
  if (buf.length < LEN_BYTES) return undefined;
  const len = ((buf[0]! << 24) | (buf[1]! << 16) | (buf[2]! << 8) | buf[3]!) >>> 0;
  if (len > max) throw new DecodeError({ kind: "FrameTooLarge", len, max });
  if (len < HEADER_BYTES) throw new DecodeError({ kind: "FrameTooShort", len });
  return len;
}

/**
 * A streaming decoder: push bytes as they arrive (split anywhere), take whole frames out. The
 * length prefix is checked against the limit before the body is buffered, and the buffer is
 * grown to the frame's size only once its prefix passed.
 */
export class Decoder {
  readonly maxFrameLen: number;
  private buf = new Uint8Array(0);
  private start = 0;
  private end = 0;

  /** `maxFrameLen` is clamped to {@link MAX_FRAME_LEN}. */
  constructor(maxFrameLen: number = DEFAULT_MAX_FRAME_LEN) {
    this.maxFrameLen = Math.min(maxFrameLen, MAX_FRAME_LEN);
  }

  /** Bytes received and not yet decoded. */
  get buffered(): number {
    return this.end - this.start;
  }

  /** Appends received bytes. Call {@link next} until it returns undefined. */
  push(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    if (this.end + bytes.length > this.buf.length) {
      this.makeRoom(bytes.length);
    }
    this.buf.set(bytes, this.end);
    this.end += bytes.length;
  }

  private makeRoom(incoming: number): void {
    const pending = this.end - this.start;
    // Keep at most one frame's worth plus what arrives: the prefix check in `next` bounds it.
    const need = pending + incoming;
    if (need <= this.buf.length) {
      this.buf.copyWithin(0, this.start, this.end);
    } else {
      const grown = new Uint8Array(Math.max(need, this.buf.length * 2, 4096));
      grown.set(this.buf.subarray(this.start, this.end));
      this.buf = grown;
    }
    this.start = 0;
    this.end = pending;
  }

  /**
   * Takes one whole frame off the front, or returns undefined when more bytes are needed.
   * Throws {@link DecodeError}; after one, the stream is not aligned and must be dropped.
   */
  next(): Envelope | undefined {
    const pending = this.buf.subarray(this.start, this.end);
    const len = peekLen(pending, this.maxFrameLen);
    if (len === undefined) return undefined;
    const total = LEN_BYTES + len;
    if (pending.length < total) return undefined;
    // One copy per frame: its fields (bytes included) are views of it, never of the buffer
    // that later input overwrites.
    const raw = pending.slice(LEN_BYTES, total);
    this.start += total;
    if (this.start === this.end) {
      this.start = 0;
      this.end = 0;
    }
    const code = raw[0]!;
    const requestId = ((raw[1]! << 24) | (raw[2]! << 16) | (raw[3]! << 8) | raw[4]!) >>> 0;
    const frame = decodeBody(code, raw.subarray(HEADER_BYTES));
    return { requestId, frame };
  }

  /** Drops the buffer when it holds nothing, so an idle connection costs little. */
  shrinkIdle(): void {
    if (this.start === this.end) {
      this.buf = new Uint8Array(0);
      this.start = 0;
      this.end = 0;
    }
  }

  /** Hands over the bytes not yet decoded (a partial frame at most) and empties the buffer. */
  takeUndecoded(): Uint8Array {
    const rest = this.buf.slice(this.start, this.end);
    this.buf = new Uint8Array(0);
    this.start = 0;
    this.end = 0;
    return rest;
  }
}

/** Decodes exactly one frame from `bytes` (a test and tooling helper). */
export function decodeOne(bytes: Uint8Array, maxFrameLen = DEFAULT_MAX_FRAME_LEN): Envelope {
  const d = new Decoder(maxFrameLen);
  d.push(bytes);
  const env = d.next();
  if (env === undefined) {
    throw new DecodeError({ kind: "Truncated", field: "frame" });
  }
  return env;
}
