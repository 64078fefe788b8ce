// Remote ICE candidates wait until the remote description is set; then they are applied in order.

export interface IceCandidate {
  candidate: string;
  sdpMid: string | null;
  sdpMLineIndex: number | null;
}

/** At most this many candidates wait; a flood beyond it is dropped (and counted). */
export const MAX_QUEUED = 100;

export class CandidateQueue {
  private waiting: IceCandidate[] = [];
  private ready = false;
  /** Candidates dropped because the queue was full. */
  dropped = 0;

  constructor(
    private readonly apply: (c: IceCandidate) => Promise<void> | void,
    private readonly limit = MAX_QUEUED,
  ) {}

  /** A candidate from the server: applied now if the remote description is set, else queued. */
  async push(c: IceCandidate): Promise<void> {
    if (this.ready) {
      await this.apply(c);
      return;
    }
    if (this.waiting.length >= this.limit) {
      this.dropped += 1;
      return;
    }
    this.waiting.push(c);
  }

  /** The remote description is set: apply everything queued, in arrival order. */
  async open(): Promise<void> {
    this.ready = true;
    while (this.waiting.length > 0) {
      const c = this.waiting.shift() as IceCandidate;
      await this.apply(c);
    }
  }

  get isOpen(): boolean {
    return this.ready;
  }

  get length(): number {
    return this.waiting.length;
  }

  /** A new peer connection: nothing is applied until its remote description is set. */
  reset(): void {
    this.ready = false;
    this.waiting = [];
  }
}

/** Reads a `webrtc:ice-candidate` payload; `null` when it is not one. */
export function parseCandidate(v: unknown): IceCandidate | null {
  if (typeof v !== 'object' || v === null) return null;
  const o = v as Record<string, unknown>;
  if (typeof o.candidate !== 'string') return null;
  const mid = typeof o.sdpMid === 'string' ? o.sdpMid : null;
  const idx =
    typeof o.sdpMLineIndex === 'number' && Number.isInteger(o.sdpMLineIndex) ? o.sdpMLineIndex : null;
  return { candidate: o.candidate, sdpMid: mid, sdpMLineIndex: idx };
}
