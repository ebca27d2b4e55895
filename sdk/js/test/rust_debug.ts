/**
 * Prints a decoded frame the way Rust's `{:?}` prints `courier_protocol::Frame`, so that a
 * decoded vector can be compared with the `debug` string protocol/vectors.json records for it:
 * every field, nested struct, list and enum is checked by that one comparison.
 */

import { frameBodyCodec, type Frame } from "../src/frames.js";
import type { Codec } from "../src/wire.js";

/** `clientMsgId` -> `client_msg_id`. */
function snake(name: string): string {
  return name.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());
}

/** `bytes::Bytes` Debug: b"..." with \n \r \t \\ \" \0, printable ASCII, else \xNN. */
function bytesDebug(b: Uint8Array): string {
  let out = 'b"';
  for (const c of b) {
    if (c === 0x0a) out += "\\n";
    else if (c === 0x0d) out += "\\r";
    else if (c === 0x09) out += "\\t";
    else if (c === 0x5c || c === 0x22) out += "\\" + String.fromCharCode(c);
    else if (c === 0) out += "\\0";
    else if (c >= 0x20 && c < 0x7f) out += String.fromCharCode(c);
    else out += "\\x" + c.toString(16).padStart(2, "0");
  }
  return out + '"';
}

/** `str` Debug (char::escape_debug, without escaping single quotes). */
function strDebug(s: string): string {
  let out = '"';
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (ch === "\\" || ch === '"') out += "\\" + ch;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\0") out += "\\0";
    else if (cp < 0x20 || cp === 0x7f) out += `\\u{${cp.toString(16)}}`;
    else out += ch;
  }
  return out + '"';
}

export function valueDebug(codec: Codec<unknown>, v: unknown): string {
  const shape = codec.shape;
  switch (shape.kind) {
    case "u8":
    case "u16":
    case "u32":
    case "u64":
    case "bool":
      return String(v);
    case "str":
      return strDebug(v as string);
    case "bytes":
      return bytesDebug(v as Uint8Array);
    case "enum":
      return shape.names.get(v as number) ?? `<invalid ${String(v)}>`;
    case "list":
      return "[" + (v as unknown[]).map((x) => valueDebug(shape.item, x)).join(", ") + "]";
    case "opt":
      return v === undefined ? "None" : `Some(${valueDebug(shape.item, v)})`;
    case "tail":
      return v === undefined ? "Tail(None)" : `Tail(Some(${valueDebug(shape.item, v)}))`;
    case "struct": {
      if (shape.fields.length === 0) return shape.name;
      const rec = v as Record<string, unknown>;
      const fields = shape.fields.map(([k, c]) => `${snake(k)}: ${valueDebug(c, rec[k])}`);
      return `${shape.name} { ${fields.join(", ")} }`;
    }
  }
}

/** `Frame::Name(Name { ... })`, as Rust prints it. */
export function frameDebug(frame: Frame): string {
  const codec = frameBodyCodec(frame.type);
  return `${frame.type}(${valueDebug(codec as Codec<unknown>, frame)})`;
}
