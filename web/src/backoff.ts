// Reconnect delays: exponential from 1 s up to 5 s, with jitter, for at most 10 attempts. After
// that the page stops on its own and shows an "offline — retry" control.

export interface BackoffOptions {
  minMs: number;
  maxMs: number;
  factor: number;
  maxAttempts: number;
  /** Fraction of the delay added or removed at random (0.2 = ±20 %), kept within [min, max]. */
  jitter: number;
}

export const RECONNECT: BackoffOptions = {
  minMs: 1000,
  maxMs: 5000,
  factor: 2,
  maxAttempts: 10,
  jitter: 0.2,
};

export class Backoff {
  private attempts = 0;

  constructor(
    private readonly opts: BackoffOptions = RECONNECT,
    private readonly random: () => number = Math.random,
  ) {}

  /** The delay before the next attempt in ms, or `null` once every attempt is used up. */
  next(): number | null {
    const o = this.opts;
    if (this.attempts >= o.maxAttempts) return null;
    const base = Math.min(o.maxMs, o.minMs * o.factor ** this.attempts);
    this.attempts += 1;
    const jittered = base + base * o.jitter * (this.random() * 2 - 1);
    return Math.round(Math.min(o.maxMs, Math.max(o.minMs, jittered)));
  }

  /** Attempts made since the last reset. */
  get used(): number {
    return this.attempts;
  }

  get exhausted(): boolean {
    return this.attempts >= this.opts.maxAttempts;
  }

  /** A connection succeeded (or the person asked to retry): start again from the shortest delay. */
  reset(): void {
    this.attempts = 0;
  }
}
