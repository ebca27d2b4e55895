/**
 * Remembers which messages were already handed to the user, in bounded memory
 * (client/src/dedupe.rs).
 *
 * A message can arrive twice: as a push and again in the SYNC after a reconnect. Per thread
 * the set keeps a `floor` (every id at or below it counts as seen) and the ids above the floor
 * seen since, capped at {@link RECENT_PER_THREAD}. The floor rises when a completed sync
 * proves everything up to the newest message it returned was delivered, and when the recent
 * ids overflow (the oldest are folded into the floor).
 *
 * The threads are bounded too: at most `maxThreads` (default {@link MAX_THREADS}) are kept,
 * the ones most recently touched. Past the bound the thread touched longest ago is forgotten
 * whole; a message of it that arrives a second time (a push, then again in a later sync) may
 * then be emitted twice. Memory is at most `maxThreads × RECENT_PER_THREAD` ids.
 */

/** Ids above the floor kept per thread. */
export const RECENT_PER_THREAD = 1024;
/** Threads remembered by default; the least recently touched is forgotten past it. */
export const MAX_THREADS = 4096;

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
  /** In order of last touch, oldest first (a Map iterates in insertion order). */
  private readonly threads = new Map<bigint, ThreadSeen>();
  /** The thread touched last (the Map's last key), if any. */
  private newest: bigint | undefined;

  /** `maxThreads`: threads remembered at most (at least 1). */
  constructor(readonly maxThreads: number = MAX_THREADS) {
    this.maxThreads = Math.max(1, Math.floor(maxThreads));
  }

  /** The thread's entry, made the most recently touched; forgets the oldest past the bound. */
  private entry(thread: bigint): ThreadSeen {
    let seen = this.threads.get(thread);
    // Already the most recently touched (a busy thread): nothing to move.
    if (seen !== undefined && thread === this.newest) return seen;
    this.newest = thread;
    if (seen !== undefined) {
      this.threads.delete(thread);
    } else {
      seen = { floor: 0n, recent: [] };
      if (this.threads.size >= this.maxThreads) {
        const oldest = this.threads.keys().next().value as bigint;
        this.threads.delete(oldest);
      }
    }
    this.threads.set(thread, seen);
    return seen;
  }

  /** Threads remembered (at most `maxThreads`). */
  get threadCount(): number {
    return this.threads.size;
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
