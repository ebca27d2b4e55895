/** Node-only helpers (`courier-client/node`): a token storage in a file. */

import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";

import type { TokenStorage } from "./storage.js";

/**
 * Keeps the items as one JSON object in `path` (mode 0600: it holds a session token), written
 * whole through a temporary file and a rename so a crash never leaves half a file.
 */
export class FileStorage implements TokenStorage {
  constructor(private readonly path: string) {}

  private read(): Record<string, string> {
    try {
      const parsed: unknown = JSON.parse(readFileSync(this.path, "utf8"));
      return typeof parsed === "object" && parsed !== null ? (parsed as Record<string, string>) : {};
    } catch {
      return {};
    }
  }

  private write(items: Record<string, string>): void {
    mkdirSync(dirname(this.path), { recursive: true });
    const tmp = `${this.path}.tmp`;
    writeFileSync(tmp, JSON.stringify(items), { mode: 0o600 });
    renameSync(tmp, this.path);
  }

  getItem(key: string): string | null {
    return this.read()[key] ?? null;
  }

  setItem(key: string, value: string): void {
    const items = this.read();
    items[key] = value;
    this.write(items);
  }

  removeItem(key: string): void {
    const items = this.read();
    delete items[key];
    this.write(items);
  }
}
