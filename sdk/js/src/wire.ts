/**
 * Primitive field encodings (PROTOCOL.md section 2, protocol/src/wire.rs):
 *
 * | type        | layout                                              |
 * |-------------|-----------------------------------------------------|
 * | u8 … u64    | big-endian, fixed width (u64 is a `bigint`)         |
 * | bool        | one byte, 0 or 1; anything else is malformed        |
 * | str         | u16 byte length, then that many bytes of UTF-8      |
 * | bytes       | u32 byte length, then the bytes                     |
 * | list<T>     | u16 element count, then the elements                |
 * | opt<T>      | one byte 0 (absent) or 1 followed by a T            |
 *
 * Every type is a {@link Codec}: a writer, a reader and a description of its shape (used to
 * print values and to derive TypeScript types). Structs keep their fields in declaration
 * order, which is wire order. Decoding never allocates more than the frame already holds: a
 * length or count is checked against the bytes that remain first.
 */

import { DecodeError, EncodeError } from "./errors.js";

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

const U64_MAX = (1n << 64n) - 1n;

/** A cursor over one frame body. `bytes` and nested values are views into it, not copies. */
export class Reader {
  private readonly view: DataView;
  private pos = 0;

  constructor(private readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number, field: string): number {
    if (this.remaining() < n) {
      throw new DecodeError({ kind: "Truncated", field });
    }
    const at = this.pos;
    this.pos += n;
    return at;
  }

  u8(field: string): number {
    return this.view.getUint8(this.need(1, field));
  }
  u16(field: string): number {
    return this.view.getUint16(this.need(2, field));
  }
  u32(field: string): number {
    return this.view.getUint32(this.need(4, field));
  }
  u64(field: string): bigint {
    return this.view.getBigUint64(this.need(8, field));
  }
  take(n: number, field: string): Uint8Array {
    const at = this.need(n, field);
    return this.buf.subarray(at, at + n);
  }
}

/** A growable output buffer; frames are appended back to back. */
export class Writer {
  private buf: Uint8Array;
  private view: DataView;
  private len = 0;

  constructor(capacity = 256) {
    this.buf = new Uint8Array(capacity);
    this.view = new DataView(this.buf.buffer);
  }

  get length(): number {
    return this.len;
  }

  /** Makes room for `n` more bytes; returns where they go. Grows `buf` and `view`: read them
   * only after calling this. */
  private reserve(n: number): number {
    const need = this.len + n;
    if (need > this.buf.length) {
      let cap = Math.max(this.buf.length * 2, 64);
      while (cap < need) cap *= 2;
      const grown = new Uint8Array(cap);
      grown.set(this.buf.subarray(0, this.len));
      this.buf = grown;
      this.view = new DataView(grown.buffer);
    }
    const at = this.len;
    this.len = need;
    return at;
  }

  u8(v: number): void {
    const at = this.reserve(1);
    this.view.setUint8(at, v);
  }
  u16(v: number): void {
    const at = this.reserve(2);
    this.view.setUint16(at, v);
  }
  u32(v: number): void {
    const at = this.reserve(4);
    this.view.setUint32(at, v);
  }
  u64(v: bigint): void {
    const at = this.reserve(8);
    this.view.setBigUint64(at, v);
  }
  bytes(b: Uint8Array): void {
    const at = this.reserve(b.length);
    this.buf.set(b, at);
  }
  /** Overwrites a u32 written earlier at `at` (a length prefix known only afterwards). */
  patchU32(at: number, v: number): void {
    this.view.setUint32(at, v);
  }

  /** Drops everything written after the first `len` bytes. */
  truncate(len: number): void {
    this.len = Math.min(this.len, len);
  }

  /** A copy of what was written. */
  toBytes(): Uint8Array {
    return this.buf.slice(0, this.len);
  }

  /** Hands out what was written (a copy) and empties the writer, keeping its capacity. */
  take(): Uint8Array {
    const out = this.toBytes();
    this.len = 0;
    return out;
  }
}

/** The shape of a codec, for printing values and telling kinds apart. */
export type Shape =
  | { kind: "u8" | "u16" | "u32" | "u64" | "bool" | "str" | "bytes" }
  | { kind: "enum"; name: string; names: ReadonlyMap<number, string> }
  | { kind: "list"; item: Codec<unknown> }
  | { kind: "opt"; item: Codec<unknown> }
  | { kind: "tail"; item: Codec<unknown> }
  | { kind: "struct"; name: string; fields: ReadonlyArray<readonly [string, Codec<unknown>]> };

/** How one type is laid out on the wire. `field` names the field in errors. */
export interface Codec<T> {
  readonly shape: Shape;
  put(w: Writer, v: T, field: string): void;
  get(r: Reader, field: string): T;
}

/** The TypeScript type a codec reads and writes. */
export type Infer<C> = C extends Codec<infer T> ? T : never;

function checkInt(v: number, max: number, field: string): void {
  if (!Number.isInteger(v) || v < 0 || v > max) {
    throw new EncodeError(field, `${v} is not an integer in 0..=${max}`);
  }
}

export const u8: Codec<number> = {
  shape: { kind: "u8" },
  put: (w, v, f) => (checkInt(v, 0xff, f), w.u8(v)),
  get: (r, f) => r.u8(f),
};

export const u16: Codec<number> = {
  shape: { kind: "u16" },
  put: (w, v, f) => (checkInt(v, 0xffff, f), w.u16(v)),
  get: (r, f) => r.u16(f),
};

export const u32: Codec<number> = {
  shape: { kind: "u32" },
  put: (w, v, f) => (checkInt(v, 0xffff_ffff, f), w.u32(v)),
  get: (r, f) => r.u32(f),
};

/** u64 ids do not fit a JS number (ids carry partition bits in their top bits): bigint. */
export const u64: Codec<bigint> = {
  shape: { kind: "u64" },
  put: (w, v, f) => {
    if (typeof v !== "bigint" || v < 0n || v > U64_MAX) {
      throw new EncodeError(f, `${String(v)} is not a bigint in 0..=2^64-1`);
    }
    w.u64(v);
  },
  get: (r, f) => r.u64(f),
};

export const bool: Codec<boolean> = {
  shape: { kind: "bool" },
  put: (w, v) => w.u8(v ? 1 : 0),
  get: (r, f) => {
    const b = r.u8(f);
    if (b > 1) throw new DecodeError({ kind: "InvalidValue", field: f, value: b });
    return b === 1;
  },
};

/**
 * The UTF-8 of `s`, cut at a character boundary to at most `max` bytes: a longer string
 * cannot be framed, and a truncated one beats a length prefix that lies (wire.rs does the same).
 */
export function utf8Truncated(s: string, max: number): Uint8Array {
  const raw = utf8Encoder.encode(s);
  if (raw.length <= max) return raw;
  let end = max;
  // Continuation bytes are 0b10xxxxxx: back off to the start of a character.
  while (end > 0 && (raw[end]! & 0xc0) === 0x80) end--;
  return raw.subarray(0, end);
}

export const str: Codec<string> = {
  shape: { kind: "str" },
  put: (w, v) => {
    const raw = utf8Truncated(v, 0xffff);
    w.u16(raw.length);
    w.bytes(raw);
  },
  get: (r, f) => {
    const raw = r.take(r.u16(f), f);
    try {
      return utf8Decoder.decode(raw);
    } catch {
      throw new DecodeError({ kind: "InvalidUtf8", field: f });
    }
  },
};

export const bytes: Codec<Uint8Array> = {
  shape: { kind: "bytes" },
  put: (w, v, f) => {
    checkInt(v.length, 0xffff_ffff, f);
    w.u32(v.length);
    w.bytes(v);
  },
  get: (r, f) => r.take(r.u32(f), f),
};

export function list<T>(item: Codec<T>): Codec<T[]> {
  return {
    shape: { kind: "list", item: item as Codec<unknown> },
    put: (w, v, f) => {
      // As wire.rs: a list longer than u16::MAX cannot be framed; the rest is cut off.
      const n = Math.min(v.length, 0xffff);
      w.u16(n);
      for (let i = 0; i < n; i++) item.put(w, v[i]!, f);
    },
    get: (r, f) => {
      const count = r.u16(f);
      // Every element takes at least one byte: a count above what remains is a lie.
      if (count > r.remaining()) throw new DecodeError({ kind: "Truncated", field: f });
      const out: T[] = [];
      for (let i = 0; i < count; i++) out.push(item.get(r, f));
      return out;
    },
  };
}

/** `opt<T>`: `undefined` when absent. */
export function opt<T>(item: Codec<T>): Codec<T | undefined> {
  return {
    shape: { kind: "opt", item: item as Codec<unknown> },
    put: (w, v, f) => {
      if (v === undefined) {
        w.u8(0);
      } else {
        w.u8(1);
        item.put(w, v, f);
      }
    },
    get: (r, f) => {
      const tag = r.u8(f);
      if (tag === 0) return undefined;
      if (tag === 1) return item.get(r, f);
      throw new DecodeError({ kind: "InvalidValue", field: f, value: tag });
    },
  };
}

/**
 * A field appended at the very end of a frame body that may be left out (Rust `wire::Tail`):
 * written as its value when present and as nothing when `undefined`; a body that ends before
 * it reads as `undefined`. Only the last field of a frame may be a tail.
 */
export function tail<T>(item: Codec<T>): Codec<T | undefined> {
  return {
    shape: { kind: "tail", item: item as Codec<unknown> },
    put: (w, v, f) => {
      if (v !== undefined) item.put(w, v, f);
    },
    get: (r, f) => (r.remaining() === 0 ? undefined : item.get(r, f)),
  };
}

/**
 * A u8-coded enum. Values are the numeric codes (`MessageKind.Text` is 0); an unknown code is
 * a decode error.
 */
export function enumOf<const E extends Record<string, number>>(
  name: string,
  values: E,
): Codec<E[keyof E]> {
  const names = new Map<number, string>(Object.entries(values).map(([k, v]) => [v, k]));
  return {
    shape: { kind: "enum", name, names },
    put: (w, v, f) => {
      if (!names.has(v)) throw new EncodeError(f, `${v} is not a ${name}`);
      w.u8(v);
    },
    get: (r, f) => {
      const code = r.u8(f);
      if (!names.has(code)) throw new DecodeError({ kind: "InvalidValue", field: f, value: code });
      return code as E[keyof E];
    },
  };
}

type StructOf<F extends Record<string, Codec<any>>> = { [K in keyof F]: Infer<F[K]> };

/**
 * A struct: its fields in the order of `fields`, errors naming `Name.field` (as the Rust
 * crate does, whatever field holds the struct).
 */
export function struct<F extends Record<string, Codec<any>>>(
  name: string,
  fields: F,
): Codec<StructOf<F>> {
  const entries = Object.entries(fields).map(
    ([k, c]) => [k, c as Codec<unknown>, `${name}.${k}`] as const,
  );
  return {
    shape: { kind: "struct", name, fields: entries.map(([k, c]) => [k, c] as const) },
    put: (w, v) => {
      const rec = v as Record<string, unknown>;
      for (const [k, c, label] of entries) c.put(w, rec[k], label);
    },
    get: (r) => {
      const out: Record<string, unknown> = {};
      for (const [k, c, label] of entries) out[k] = c.get(r, label);
      return out as StructOf<F>;
    },
  };
}
