/**
 * courier-client: the Courier chat protocol in TypeScript, for browsers and Node.
 *
 * - `codec` / `frames`: every frame of protocol v1, ids as bigint, a streaming decoder.
 */

export * from "./errors.js";
export * from "./frames.js";
export * from "./codec.js";
export { Reader, Writer, type Codec, type Infer, type Shape } from "./wire.js";
