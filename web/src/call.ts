// The call state machine of one side, as the page shows it. Pure: inputs in, the next view out;
// the page starts and stops media on the transitions (see `mediaWanted`).

export type CallState =
  | 'idle'
  | 'calling'
  | 'ringing'
  | 'connecting'
  | 'connected'
  | 'failed'
  | 'ended';

/** `call:ended` reasons from the server, plus the page's own: `lost` (the call was gone after a
 * reconnect) and `media` (this browser could not start its camera/microphone or connection). */
export type EndReason =
  | 'hangup'
  | 'rejected'
  | 'timeout'
  | 'failed'
  | 'partner_left'
  | 'lost'
  | 'media';

export interface CallView {
  state: CallState;
  video: boolean;
  /** Who asked for the call (only meaningful while `calling`/`ringing`). */
  outgoing: boolean;
  reason?: EndReason;
}

export type CallInput =
  /** This guest asked for a call (`call:request` acknowledged). */
  | { type: 'request'; video: boolean }
  /** `call:incoming`. */
  | { type: 'incoming'; video: boolean }
  /** `call:accepted`. */
  | { type: 'accepted' }
  /** The peer connection's `connectionState`. */
  | { type: 'media'; state: RTCPeerConnectionState }
  /** `call:ended`, or the page gave up on its own (`media`). */
  | { type: 'ended'; reason: EndReason }
  /** `connection:established` after a (re)connect: the server's view of this side, or none. */
  | { type: 'resume'; call: { state: string; video: boolean } | null }
  /** The ended/failed notice has been shown long enough. */
  | { type: 'clear' };

export const IDLE: CallView = { state: 'idle', video: false, outgoing: false };

const ACTIVE: ReadonlySet<CallState> = new Set(['calling', 'ringing', 'connecting', 'connected']);

export function isActive(v: CallView): boolean {
  return ACTIVE.has(v.state);
}

/** True while the call is accepted: the page must hold a peer connection to the server. */
export function mediaWanted(v: CallView): boolean {
  return v.state === 'connecting' || v.state === 'connected';
}

/** A new call may be started from here. */
export function canStart(v: CallView): boolean {
  return !isActive(v);
}

export function reduceCall(v: CallView, input: CallInput): CallView {
  switch (input.type) {
    case 'request':
      return canStart(v) ? { state: 'calling', video: input.video, outgoing: true } : v;
    case 'incoming':
      return canStart(v) ? { state: 'ringing', video: input.video, outgoing: false } : v;
    case 'accepted':
      return v.state === 'calling' || v.state === 'ringing' ? { ...v, state: 'connecting' } : v;
    case 'media':
      if (!mediaWanted(v)) return v;
      if (input.state === 'connected') return { ...v, state: 'connected' };
      // Anything else (new, connecting, disconnected, failed, closed) means no media right now;
      // the server decides when the call has failed for good.
      return { ...v, state: 'connecting' };
    case 'ended':
      if (!isActive(v)) return v;
      return {
        state: input.reason === 'failed' || input.reason === 'media' ? 'failed' : 'ended',
        video: v.video,
        outgoing: v.outgoing,
        reason: input.reason,
      };
    case 'resume': {
      const c = input.call;
      if (c === null) {
        return isActive(v) ? { ...v, state: 'ended', reason: 'lost' } : v;
      }
      const outgoing = v.outgoing;
      switch (c.state) {
        case 'calling':
          return { state: 'calling', video: c.video, outgoing: true };
        case 'ringing':
          return { state: 'ringing', video: c.video, outgoing: false };
        case 'connecting':
        case 'connected':
          // The server's `connected` may be stale (this page's media is gone after a reload);
          // the peer connection tells once it is up.
          return { state: 'connecting', video: c.video, outgoing };
        default:
          return v;
      }
    }
    case 'clear':
      return isActive(v) ? v : IDLE;
  }
}

/** Text for a person, for each state (and end reason). */
export function describeCall(v: CallView): string {
  const kind = v.video ? 'Video call' : 'Voice call';
  switch (v.state) {
    case 'idle':
      return '';
    case 'calling':
      return `${kind}: calling…`;
    case 'ringing':
      return `Incoming ${kind.toLowerCase()}`;
    case 'connecting':
      return `${kind}: connecting…`;
    case 'connected':
      return `${kind}: connected`;
    case 'failed':
      return v.reason === 'media'
        ? 'The call could not start on this device.'
        : 'The call failed: the connection to the media server was lost.';
    case 'ended':
      switch (v.reason) {
        case 'rejected':
          return v.outgoing ? 'The stranger declined the call.' : 'You declined the call.';
        case 'timeout':
          return v.outgoing ? 'No answer.' : 'Missed call.';
        case 'partner_left':
          return 'The call ended: the stranger left.';
        case 'lost':
          return 'The call ended while you were away.';
        default:
          return 'Call ended.';
      }
  }
}
