/**
 * Node-only helpers (`courier-client/node`): a token storage in a file, and a transport over
 * plain TCP, which the Courier server speaks natively (`--listen`), for Node programs, tools
 * and tests that need no WebSocket.
 */

import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { connect as netConnect } from "node:net";
import { dirname } from "node:path";

import type { TokenStorage } from "./storage.js";
import type { Connector } from "./transport.js";

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

/**
 * A connector over TCP. URLs are `tcp://host:port` (a bare `host:port` works too, and a
 * REDIRECT's address maps onto either). Nagle is off, as in the Rust client.
 */
export function tcpConnector(): Connector {
  return (url, handlers) => {
    const target = new URL(url.includes("://") ? url : `tcp://${url}`);
    if (target.protocol !== "tcp:") {
      throw new Error(`tcpConnector takes tcp://host:port URLs, not ${url}`);
    }
    const host = target.hostname.replace(/^\[(.*)\]$/, "$1");
    const port = Number(target.port);
    if (!Number.isInteger(port) || port <= 0) throw new Error(`no port in ${url}`);
    const socket = netConnect({ host, port, noDelay: true });
    let done = false;
    const finish = (why: string) => {
      if (done) return;
      done = true;
      handlers.onClose(why);
    };
    socket.on("connect", () => {
      if (!done) handlers.onOpen();
    });
    socket.on("data", (chunk: Buffer) => {
      if (!done) handlers.onBytes(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    });
    socket.on("error", (e) => finish(e.message));
    socket.on("close", () => finish("the server closed the TCP connection"));
    return {
      send: (bytes) => {
        socket.write(bytes);
      },
      close: () => {
        done = true;
        socket.destroy();
      },
    };
  };
}
