/**
 * The byte pipe under a connection. The client needs only this: open, bytes in (split
 * anywhere), bytes out, close. Over WebSocket each binary message carries one or more whole
 * Courier frames exactly as on TCP; the session's streaming decoder does not care where
 * messages end, so the same seam carries the encrypted transport:
 *
 * ```text
 *   Session (frames)  <->  [Noise transport: handshake, then records]  <->  WebSocket
 * ```
 *
 * The Noise layer (`noiseConnector`, src/noise/connector.ts) is a {@link Connector} that
 * wraps another: it runs the handshake on the inner transport's bytes before calling `onOpen`,
 * then decrypts what arrives into `onBytes` and encrypts what `send` gets. Nothing above it
 * changes.
 */

/** What a transport reports, in order: `onOpen` once, then bytes, then `onClose` once. */
export interface TransportHandlers {
  onOpen(): void;
  onBytes(bytes: Uint8Array): void;
  /**
   * The transport is gone (closed by the peer, a network error, or refused to open). A layer
   * that failed on its own terms (the Noise transport: a pin mismatch, a plaintext server)
   * passes its error too, so the client can say what to do.
   */
  onClose(why: string, error?: Error): void;
}

export interface Transport {
  /** Writes bytes holding whole frames. Only after `onOpen`. */
  send(bytes: Uint8Array): void;
  /** Closes; no handler is called afterwards. */
  close(): void;
}

/** Opens a transport to `url`; reports through `handlers`. May throw for a bad URL. */
export type Connector = (url: string, handlers: TransportHandlers) => Transport;

/** The part of the WebSocket API the client uses (browsers, Node 22+, or the `ws` package). */
export interface WebSocketLike {
  binaryType: string;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Close code for a text message: Courier speaks binary only (RFC 6455 1003, unsupported data). */
const UNSUPPORTED_DATA = 1003;

/**
 * A connector over WebSocket. `ctor` defaults to the platform's `WebSocket` (browsers, Node
 * 22+); on Node 20 pass one in (e.g. the `ws` package's).
 */
export function webSocketConnector(ctor?: WebSocketConstructor): Connector {
  return (url, handlers) => {
    const Ctor = ctor ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (Ctor === undefined) {
      throw new Error(
        "this runtime has no WebSocket (Node before 22): pass a WebSocket constructor " +
          "as the client's `WebSocket` option, e.g. the `ws` package's",
      );
    }
    const ws = new Ctor(url);
    ws.binaryType = "arraybuffer";
    let done = false;
    const finish = (why: string) => {
      if (done) return;
      done = true;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      handlers.onClose(why);
    };
    ws.onopen = () => {
      if (!done) handlers.onOpen();
    };
    ws.onmessage = (ev) => {
      if (done) return;
      const data = ev.data;
      if (data instanceof ArrayBuffer) {
        handlers.onBytes(new Uint8Array(data));
      } else if (ArrayBuffer.isView(data)) {
        handlers.onBytes(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      } else {
        ws.close(UNSUPPORTED_DATA, "Courier frames travel in binary messages");
        finish("the server sent a text message; Courier speaks binary frames only");
      }
    };
    ws.onclose = (ev) => finish(`WebSocket closed (code ${ev.code ?? "none"}${ev.reason ? `: ${ev.reason}` : ""})`);
    // An error is always followed by a close, which carries the code.
    ws.onerror = () => {};
    return {
      send: (bytes) => ws.send(bytes),
      close: () => {
        done = true;
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        ws.close(1000);
      },
    };
  };
}
