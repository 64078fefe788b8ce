// One call's media: the camera/microphone and the ONE peer connection to tandem's media server.
// Signaling goes through `Signal` (the page's socket). Every description change runs in order on
// one promise chain, so a server renegotiation offer never interleaves with our own offer.

import { CandidateQueue, type IceCandidate } from './candidates';

export interface Signal {
  offer(sdp: string): void;
  answer(sdp: string): void;
  candidate(c: IceCandidate): void;
}

export interface MediaEvents {
  /** The peer connection's `connectionState`. */
  state(s: RTCPeerConnectionState): void;
  /** The stream of everything the partner sends (tracks are added as they arrive). */
  remote(stream: MediaStream): void;
  /** Something went wrong for good (a text for a person). */
  error(message: string): void;
}

export class CallMedia {
  private pc: RTCPeerConnection | null = null;
  private readonly remoteStream = new MediaStream();
  private chain: Promise<void> = Promise.resolve();
  private readonly candidates: CandidateQueue;
  private closed = false;
  private restarted = false;

  constructor(
    readonly local: MediaStream,
    private readonly iceServers: RTCIceServer[],
    private readonly signal: Signal,
    private readonly events: MediaEvents,
  ) {
    this.candidates = new CandidateQueue(async (c) => {
      if (!this.pc || this.closed) return;
      try {
        await this.pc.addIceCandidate(c.candidate === '' ? null : c);
      } catch {
        // A candidate the browser cannot use is no reason to fail the call.
      }
    });
  }

  /** Asks for the camera (video calls) and microphone. Throws the browser's error. */
  static async acquire(video: boolean): Promise<MediaStream> {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw Object.assign(new Error('no mediaDevices'), { name: 'SecurityError' });
    }
    return navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true },
      video: video ? { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } } : false,
    });
  }

  private run(step: () => Promise<void>): Promise<void> {
    this.chain = this.chain.then(step).catch((err: unknown) => {
      if (!this.closed) this.events.error(`The call setup failed (${String((err as Error)?.message ?? err)}).`);
    });
    return this.chain;
  }

  /** A fresh peer connection and its offer (a new call, or a resume after a reload). */
  start(): Promise<void> {
    return this.run(async () => {
      this.pc?.close();
      this.candidates.reset();
      const pc = new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: 'max-bundle' });
      this.pc = pc;
      for (const track of this.local.getTracks()) pc.addTrack(track, this.local);
      pc.ontrack = (e) => {
        if (pc !== this.pc) return;
        if (!this.remoteStream.getTracks().includes(e.track)) this.remoteStream.addTrack(e.track);
        e.track.onended = () => this.remoteStream.removeTrack(e.track);
        this.events.remote(this.remoteStream);
      };
      pc.onicecandidate = (e) => {
        if (pc !== this.pc) return;
        const c = e.candidate;
        this.signal.candidate(
          c ? { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex } : { candidate: '', sdpMid: null, sdpMLineIndex: null },
        );
      };
      pc.onconnectionstatechange = () => {
        if (pc !== this.pc || this.closed) return;
        this.events.state(pc.connectionState);
        if (pc.connectionState === 'connected') this.restarted = false;
        // One ICE restart of our own when the path broke; the server ends the call if it stays down.
        if (pc.connectionState === 'failed' && !this.restarted) {
          this.restarted = true;
          void this.restartIce();
        }
      };
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      this.signal.offer(pc.localDescription?.sdp ?? offer.sdp ?? '');
    });
  }

  /** Resume on the same peer connection (after a socket reconnect): an offer with an ICE restart. */
  restartIce(): Promise<void> {
    if (!this.pc || this.pc.connectionState === 'closed') return this.start();
    return this.run(async () => {
      const pc = this.pc;
      if (!pc || this.closed) return;
      if (pc.signalingState !== 'stable') await pc.setLocalDescription({ type: 'rollback' });
      const offer = await pc.createOffer({ iceRestart: true });
      await pc.setLocalDescription(offer);
      this.signal.offer(pc.localDescription?.sdp ?? offer.sdp ?? '');
    });
  }

  /** The server's answer to our offer. */
  onAnswer(sdp: string): Promise<void> {
    return this.run(async () => {
      const pc = this.pc;
      if (!pc || this.closed || pc.signalingState !== 'have-local-offer') return;
      await pc.setRemoteDescription({ type: 'answer', sdp });
      await this.candidates.open();
    });
  }

  /** A renegotiation offer from the server: answer it. */
  onOffer(sdp: string): Promise<void> {
    return this.run(async () => {
      const pc = this.pc;
      if (!pc || this.closed) return;
      if (pc.signalingState === 'have-local-offer') await pc.setLocalDescription({ type: 'rollback' });
      await pc.setRemoteDescription({ type: 'offer', sdp });
      await this.candidates.open();
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      this.signal.answer(pc.localDescription?.sdp ?? answer.sdp ?? '');
    });
  }

  /** A server candidate: applied once the remote description is set. */
  onCandidate(c: IceCandidate): void {
    void this.candidates.push(c);
  }

  setMuted(muted: boolean): void {
    for (const t of this.local.getAudioTracks()) t.enabled = !muted;
  }

  setCameraOff(off: boolean): void {
    for (const t of this.local.getVideoTracks()) t.enabled = !off;
  }

  get connectionState(): RTCPeerConnectionState {
    return this.pc?.connectionState ?? 'closed';
  }

  get hasVideo(): boolean {
    return this.local.getVideoTracks().length > 0;
  }

  close(): void {
    this.closed = true;
    this.pc?.close();
    this.pc = null;
    for (const t of this.local.getTracks()) t.stop();
    for (const t of this.remoteStream.getTracks()) this.remoteStream.removeTrack(t);
  }
}
