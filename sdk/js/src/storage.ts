/**
 * Where the client keeps its session token and sync watermark between runs. The interface is
 * the part of the Web Storage API the client uses, so `window.localStorage` is one as is;
 * Node gets {@link MemoryStorage} here and `FileStorage` from `courier-client/node`.
 */

export interface TokenStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** Keeps everything in memory: gone when the process ends. */
export class MemoryStorage implements TokenStorage {
  private readonly items = new Map<string, string>();
  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value);
  }
  removeItem(key: string): void {
    this.items.delete(key);
  }
}

/** The browser's localStorage when there is one, else a MemoryStorage. */
export function defaultStorage(): TokenStorage {
  const ls = (globalThis as { localStorage?: TokenStorage }).localStorage;
  return ls ?? new MemoryStorage();
}

/** What the client saves, under `${prefix}token`, `${prefix}watermark` and (a cluster)
 * `${prefix}watermarks`. */
export interface SavedSession {
  token: Uint8Array;
  watermark: bigint | undefined;
  /** A cluster's per-node watermarks (`watermark` is their minimum); empty otherwise. */
  watermarks: bigint[];
}

export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function unhex(s: string): Uint8Array | undefined {
  if (s.length % 2 !== 0 || !/^[0-9a-f]*$/.test(s)) return undefined;
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function loadSession(storage: TokenStorage, prefix: string): SavedSession | undefined {
  const token = unhex(storage.getItem(prefix + "token") ?? "");
  if (token === undefined || token.length === 0) return undefined;
  const w = storage.getItem(prefix + "watermark");
  const watermark = w !== null && /^[0-9]+$/.test(w) ? BigInt(w) : undefined;
  const v = storage.getItem(prefix + "watermarks");
  const watermarks =
    watermark !== undefined && v !== null && /^[0-9]+(,[0-9]+)*$/.test(v) ? v.split(",").map(BigInt) : [];
  return { token, watermark, watermarks };
}

export function saveToken(storage: TokenStorage, prefix: string, token: Uint8Array): void {
  storage.setItem(prefix + "token", hex(token));
}

export function saveWatermark(
  storage: TokenStorage,
  prefix: string,
  watermark: bigint,
  watermarks: bigint[] = [],
): void {
  storage.setItem(prefix + "watermark", watermark.toString());
  if (watermarks.length > 0) storage.setItem(prefix + "watermarks", watermarks.join(","));
  else storage.removeItem(prefix + "watermarks");
}

export function forgetSession(storage: TokenStorage, prefix: string): void {
  storage.removeItem(prefix + "token");
  storage.removeItem(prefix + "watermark");
  storage.removeItem(prefix + "watermarks");
}
