/** Jittered exponential backoff between reconnect attempts (client/src/backoff.rs). */

/**
 * The shape of the delays: `initialMs`, growing by `factor` up to `maxMs`, each scattered by
 * ±`jitter` so that clients cut off together do not come back together.
 */
export interface BackoffPolicy {
  initialMs: number;
  maxMs: number;
  factor: number;
  /** Fraction of the delay added or removed at random, in 0..1. */
  jitter: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = {
  initialMs: 100,
  maxMs: 10_000,
  factor: 2,
  jitter: 0.2,
};

/** One run of attempts: call nextDelay() after each failure. */
export class Backoff {
  private currentMs: number;

  /** `random` returns a number in [0, 1); Math.random unless a test fixes it. */
  constructor(
    private readonly policy: BackoffPolicy = DEFAULT_BACKOFF,
    private readonly random: () => number = Math.random,
  ) {
    this.currentMs = policy.initialMs;
  }

  /** The delay before the next attempt, in ms; grows the base delay for the one after. */
  nextDelay(): number {
    const base = this.currentMs;
    this.currentMs = Math.min(base * Math.max(this.policy.factor, 1), this.policy.maxMs);
    const jitter = Math.min(Math.max(this.policy.jitter, 0), 0.99);
    if (jitter === 0) return base;
    const scale = 1 - jitter + 2 * jitter * this.random();
    return base * scale;
  }

  /** Back to the initial delay, after a success. */
  reset(): void {
    this.currentMs = this.policy.initialMs;
  }
}
