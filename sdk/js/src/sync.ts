/** SYNC: everything that changed since a watermark, drained over all pages (client/src/sync.rs). */

import { ClientError } from "./client_error.js";
import type { Connection } from "./connection.js";
import {
  frame,
  type Frame,
  type FrameName,
  type FrameOf,
  type Message,
  type MessageMeta,
  type BatchVector,
  type MessageRef,
  type SyncVector,
  type Thread,
} from "./frames.js";

/** What one full sync returned. */
export interface SyncResult {
  /** Every thread that changed since the watermark, in full. */
  threads: Thread[];
  /** Every new message in those threads, thread by thread, each thread's in id order. */
  messages: Message[];
  /** Pass this as `since` next time. */
  watermark: bigint;
  /** A cluster: each node's watermark (`watermark` is their minimum); pass both next time.
   * Empty from a single node. */
  watermarks: bigint[];
  /** Messages the user deleted for themselves since the watermark. */
  deleted: MessageRef[];
  /** Replies, edits and reactions of those `messages` that have any (match by `id`). */
  meta: MessageMeta[];
}

/** Asks for SYNC pages until the server says there are no more. `sinceVector`: the per-node
 * watermarks saved with `since` (a cluster), else empty. */
export async function syncPages(
  conn: Connection,
  since: bigint,
  limit: number,
  timeoutMs: number,
  sinceVector: bigint[] = [],
): Promise<SyncResult> {
  const out: SyncResult = { threads: [], messages: [], watermark: 0n, watermarks: [], deleted: [], meta: [] };
  // The cursor and the walk's watermark: 0s ask for a new walk; every later page carries the
  // first batch's watermark (per node, on a cluster) back, so nothing committed mid-walk
  // hides below it.
  let afterThread = 0n;
  let afterMessage = 0n;
  let watermark = 0n;
  let walk: BatchVector | undefined;
  for (;;) {
    let vector: SyncVector | undefined;
    if (walk !== undefined) {
      vector = { since: sinceVector, watermarks: walk.watermarks, afterNode: walk.nextNode };
    } else if (sinceVector.length > 0) {
      vector = { since: sinceVector, watermarks: [], afterNode: 0 };
    }
    const reply = await conn.request(
      frame("Sync", { since, afterThread, afterMessage, limit, watermark, vector }),
      timeoutMs,
    );
    const batch = expectFrame(reply, "Sync", "SyncBatch");
    out.threads.push(...batch.threads);
    out.messages.push(...batch.messages);
    out.deleted.push(...batch.deleted);
    out.meta.push(...batch.meta);
    if (!batch.more) {
      out.watermark = batch.watermark;
      out.watermarks = batch.vector?.watermarks ?? [];
      return out;
    }
    afterThread = batch.nextThread;
    afterMessage = batch.nextMessage;
    watermark = batch.watermark;
    walk = batch.vector;
  }
}

/** The reply if it is of type `want`, else UnexpectedReply naming both. */
export function expectFrame<K extends FrameName>(reply: Frame, request: string, want: K): FrameOf<K> {
  if (reply.type !== want) {
    throw new ClientError({ kind: "UnexpectedReply", request, reply: reply.type });
  }
  return reply as FrameOf<K>;
}
