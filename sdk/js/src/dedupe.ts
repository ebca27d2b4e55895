/**
 * Remembers which messages were already handed to the user, in bounded memory
 * (client/src/dedupe.rs).
 *
 * A message can arrive twice: as a push and again in the SYNC after a reconnect. Per thread
 * the set keeps a `floor` (every id at or below it counts as seen) and the ids above the floor
 * seen since, capped at {@link RECENT_PER_THREAD}. The floor rises when a completed sync
 * proves everything up to the newest message it returned was delivered, and when the recent
 * ids overflow (the oldest are folded into the floor).
 */

/** Ids above the floor kept per thread. */
export const RECENT_PER_THREAD = 1024;

interface ThreadSeen {
  floor: bigint;
  /** Ascending. */
  recent: bigint[];
}

/** Index of the first element >= id. */
function lowerBound(xs: bigint[], id: bigint): number {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (xs[mid]! < id) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Seen (thread, message id) pairs. */
export class Dedupe {
  private readonly threads = new Map<bigint, ThreadSeen>();

  private entry(thread: bigint): ThreadSeen {
    let seen = this.threads.get(thread);
    if (seen === undefined) {
      seen = { floor: 0n, recent: [] };
      this.threads.set(thread, seen);
    }
    return seen;
  }

  /** Records the message; true if it had not been seen before. */
  insert(thread: bigint, id: bigint): boolean {
    const seen = this.entry(thread);
    if (id <= seen.floor) return false;
    const at = lowerBound(seen.recent, id);
    if (seen.recent[at] === id) return false;
    seen.recent.splice(at, 0, id);
    if (seen.recent.length > RECENT_PER_THREAD) {
      const over = seen.recent.length - RECENT_PER_THREAD;
      seen.floor = seen.recent[over - 1]!;
      seen.recent.splice(0, over);
    }
    return true;
  }

  /** Whether the message was seen. */
  contains(thread: bigint, id: bigint): boolean {
    const seen = this.threads.get(thread);
    if (seen === undefined) return false;
    return id <= seen.floor || seen.recent[lowerBound(seen.recent, id)] === id;
  }

  /** Counts every id up to `id` in `thread` as seen. */
  raiseFloor(thread: bigint, id: bigint): void {
    const seen = this.entry(thread);
    if (id > seen.floor) {
      seen.floor = id;
      seen.recent.splice(0, lowerBound(seen.recent, id + 1n));
    }
  }

  /** Ids remembered individually, over all threads (for tests and diagnostics). */
  recentLen(): number {
    let n = 0;
    for (const s of this.threads.values()) n += s.recent.length;
    return n;
  }
}
