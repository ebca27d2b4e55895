/** The client's one error type (client/src/error.rs). Messages say what to do. */

import { ErrorCode, errorCodeName, retryAfterSecs } from "./errors.js";
import type { NoiseError } from "./noise/keys.js";
import type { SessionError } from "./session.js";

export type ClientErrorKind =
  /** The server answered the request with ERROR_REPLY (known or unknown code). */
  | { kind: "Server"; code: number; message: string }
  /** No transport could be opened to the server. */
  | { kind: "Unreachable"; url: string; why: string }
  /**
   * The encrypted transport failed: the server does not hold the pinned key, it answered in
   * plaintext, or a record failed authentication. The text says what to do.
   */
  | { kind: "Encryption"; url: string; error: NoiseError }
  /** The request was refused before it was sent (outstanding bound, frame too large). */
  | { kind: "Session"; error: SessionError }
  /** The server answered with a frame that does not fit the request. */
  | { kind: "UnexpectedReply"; request: string; reply: string }
  /** The server speaks another protocol version. */
  | { kind: "VersionMismatch"; server: number; client: number }
  /** The connection is closed (and, when reconnecting, not yet re-established). */
  | { kind: "Disconnected"; reason: ErrorCode | undefined }
  /** No reply within the request timeout. */
  | { kind: "Timeout"; request: string; afterMs: number }
  /** The call needs a logged-in session or a saved token, and there is none. */
  | { kind: "NotLoggedIn" }
  /** Redirected too many times in a row. */
  | { kind: "TooManyRedirects"; node: string; addr: string };

function codeText(code: number): string {
  const name = errorCodeName(code);
  return name === undefined ? `unknown code ${code}` : `${name} (${code})`;
}

/** What to do about ENCRYPTION_REQUIRED, which a plaintext client gets from the server. */
function encryptionHint(code: number | undefined): string {
  return code === ErrorCode.EncryptionRequired
    ? ": the server requires the encrypted transport; pass its key as the `serverKey` option " +
        "(`courier keys show` on the server prints it), or leave out `insecurePlaintext` to " +
        "trust its key on first use"
    : "";
}

function describe(e: ClientErrorKind): string {
  switch (e.kind) {
    case "Server":
      return `server refused the request: ${codeText(e.code)}: ${e.message}${encryptionHint(e.code)}`;
    case "Encryption":
      return `encrypted connection to ${e.url} failed: ${e.error.message}`;
    case "Unreachable":
      return `cannot reach the Courier server at ${e.url}: ${e.why} (is \`courier serve\` running with a WebSocket listener there? check the URL and any proxy)`;
    case "Session":
      return `request not sent: ${e.error.message}`;
    case "UnexpectedReply":
      return `unexpected reply to ${e.request}: got ${e.reply}`;
    case "VersionMismatch":
      return `server speaks protocol version ${e.server}, this client speaks ${e.client}; use a matching courier-client`;
    case "Disconnected":
      return `not connected to the server${e.reason === undefined ? "" : ` (server closed it: ${codeText(e.reason)})`}${encryptionHint(e.reason)}`;
    case "Timeout":
      return `no reply to ${e.request} within ${e.afterMs} ms`;
    case "NotLoggedIn":
      return "not logged in: call register, login or resume (no saved token was found)";
    case "TooManyRedirects":
      return `redirected too many times (last: ${e.node} at ${e.addr})`;
  }
}

export class ClientError extends Error {
  readonly detail: ClientErrorKind;

  constructor(detail: ClientErrorKind) {
    super(describe(detail));
    this.name = "ClientError";
    this.detail = detail;
  }

  /** The server's error code, if this is a refusal by the server or a close it announced. */
  get code(): number | undefined {
    if (this.detail.kind === "Server") return this.detail.code;
    if (this.detail.kind === "Disconnected") return this.detail.reason;
    return undefined;
  }

  /**
   * Seconds to wait before retrying, when the server said (`LOGIN_THROTTLED` ends its message
   * with `[retry_after_secs=N]`); undefined otherwise.
   */
  get retryAfterSecs(): number | undefined {
    return this.detail.kind === "Server" ? retryAfterSecs(this.detail.message) : undefined;
  }

  /**
   * Whether retrying after a reconnect may succeed: the connection failed, not the request.
   */
  isConnectionError(): boolean {
    const k = this.detail.kind;
    return k === "Disconnected" || k === "Timeout" || k === "Unreachable";
  }
}

export function isConnectionError(e: unknown): boolean {
  return e instanceof ClientError && e.isConnectionError();
}
