/**
 * courier-client: the Courier chat protocol in TypeScript, for browsers and Node.
 *
 * - codec / frames: every frame of protocol v1, ids as bigint, a streaming decoder.
 * - Session: the sans-IO client state machine (handshake, request ids, heartbeat, close).
 * - Client: the typed, reconnecting client over a WebSocket (or any Connector), encrypted
 *   with the Noise transport (noise/, protocol/NOISE.md) unless told `insecurePlaintext`.
 */

export * from "./errors.js";
export * from "./frames.js";
export * from "./codec.js";
export { Reader, Writer, type Codec, type Infer, type Shape } from "./wire.js";
export * from "./session.js";
export * from "./transport.js";
export { noiseConnector, type NoiseConnectorOptions, type NoiseInfo } from "./noise/connector.js";
export {
  NoiseError,
  generateKeypair,
  keyToHex,
  parsePublicKey,
  type Keypair,
  type NoiseErrorKind,
  type RandomSource,
} from "./noise/keys.js";
export type { Pattern } from "./noise/handshake.js";
export * from "./clock.js";
export * from "./backoff.js";
export * from "./dedupe.js";
export * from "./ticks.js";
export { MemoryStorage, defaultStorage, type TokenStorage } from "./storage.js";
export { ClientError, isConnectionError, type ClientErrorKind } from "./client_error.js";
export { Client, newClientMsgId, type ClientConfig, type ClientEvents, type SyncResult } from "./client.js";
