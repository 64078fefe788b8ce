// WebRTC helpers for the call tests: an independent WebRTC stack (@roamhq/wrtc, a node-webrtc
// fork shipping libwebrtc as a prebuilt binary inside the npm package), synthetic audio/video
// sources, counting sinks, and a Socket.IO call client that speaks tandem's `webrtc:*` events.
//
// Every RTCPeerConnection, source timer and sink made here is closed by `close()`; tests call it
// in `t.after`, so nothing keeps running after a test.

import { createRequire } from 'node:module';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';

const require = createRequire(import.meta.url);
/** The @roamhq/wrtc module (RTCPeerConnection, RTCIceCandidate, nonstandard.*). */
export const wrtc = require('@roamhq/wrtc');
const { RTCPeerConnection, nonstandard } = wrtc;

// libwebrtc (through node-webrtc's N-API finalizers) crashes with SIGSEGV while node tears its
// environment down after a natural exit, even when every peer connection, track and sink was
// closed (WonderInventions/node-webrtc#7, node-webrtc/node-webrtc#636). node:test would report
// the file as failed. Once the event loop is empty and every result has been written (stdout is
// a synchronous pipe on Linux), exit at once with the exit code node already chose: process.exit
// inside an 'exit' listener skips that teardown. Registered on first use, so that it runs after
// the other 'exit' listeners (the harness's, which kills leftover servers).
let exitGuard = false;
function guardExit() {
  if (exitGuard) return;
  exitGuard = true;
  process.on('exit', () => process.exit());
}

export const SAMPLE_RATE = 48_000;
const FRAME_SAMPLES = SAMPLE_RATE / 100; // 10 ms

/**
 * Polls `fn` until it returns a truthy value or `timeoutMs` passes; then throws with `what()`
 * (a description of the state, for the failure message).
 */
export async function until(fn, timeoutMs, what, stepMs = 50) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) {
      const detail = typeof what === 'function' ? what() : what;
      throw new Error(`timed out after ${timeoutMs} ms: ${detail}`);
    }
    await sleep(stepMs);
  }
}

/**
 * A synthetic microphone and camera:
 * - audio: 10 ms frames of 16-bit mono 48 kHz samples, a sine of `toneHz`;
 * - video: i420 frames, `width`x`height` at `fps`, a solid luma `luma` (grey) with a small
 *   moving square so that every frame differs (the square barely moves the average).
 */
export class SyntheticMedia {
  constructor({ toneHz = 440, luma = 128, width = 320, height = 240, fps = 20, amplitude = 8000 } = {}) {
    this.toneHz = toneHz;
    this.luma = luma;
    this.width = width;
    this.height = height;
    this.fps = fps;
    this.amplitude = amplitude;
    this.audioSource = new nonstandard.RTCAudioSource();
    this.videoSource = new nonstandard.RTCVideoSource();
    this.audioTrack = this.audioSource.createTrack();
    this.videoTrack = this.videoSource.createTrack();
    this.phase = 0;
    this.frameNo = 0;
    this.timers = [];
    this.stopped = false;
    this.samples = new Int16Array(FRAME_SAMPLES);
    this.frame = new Uint8ClampedArray(width * height * 1.5);
  }

  start() {
    const startedAt = Date.now();
    let sentAudio = 0;
    // Node timers are coarse: catch up with wall time so that ~100 frames/s go out.
    this.timers.push(
      setInterval(() => {
        const due = Math.floor((Date.now() - startedAt) / 10) + 1;
        const n = Math.min(due - sentAudio, 10);
        for (let i = 0; i < n; i++) this.pushAudio();
        sentAudio = due;
      }, 10),
    );
    this.timers.push(setInterval(() => this.pushVideo(), Math.round(1000 / this.fps)));
    this.pushAudio();
    this.pushVideo();
    return this;
  }

  pushAudio() {
    if (this.stopped) return;
    const step = (2 * Math.PI * this.toneHz) / SAMPLE_RATE;
    for (let i = 0; i < FRAME_SAMPLES; i++) {
      this.samples[i] = Math.round(this.amplitude * Math.sin(this.phase));
      this.phase += step;
    }
    this.phase %= 2 * Math.PI;
    this.audioSource.onData({
      samples: this.samples,
      sampleRate: SAMPLE_RATE,
      bitsPerSample: 16,
      channelCount: 1,
      numberOfFrames: FRAME_SAMPLES,
    });
  }

  pushVideo() {
    if (this.stopped) return;
    const { width: w, height: h, frame } = this;
    const ySize = w * h;
    frame.fill(this.luma, 0, ySize);
    frame.fill(128, ySize); // neutral chroma (U and V)
    // A 16x16 square moving along the top rows, brighter or darker than the background.
    const sq = 16;
    const x0 = (this.frameNo * 4) % (w - sq);
    const v = this.luma > 128 ? this.luma - 60 : this.luma + 60;
    for (let y = 0; y < sq; y++) frame.fill(v, y * w + x0, y * w + x0 + sq);
    this.frameNo++;
    this.videoSource.onFrame({ width: w, height: h, data: frame });
  }

  stop() {
    if (this.stopped) return;
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.audioTrack.stop();
    this.videoTrack.stop();
  }
}

/** Estimated frequency of a mono/interleaved 16-bit buffer from its zero crossings (first channel). */
function zeroCrossingHz(samples, channelCount, sampleRate) {
  let crossings = 0;
  let prev = samples[0];
  const frames = Math.floor(samples.length / channelCount);
  for (let i = 1; i < frames; i++) {
    const s = samples[i * channelCount];
    if ((prev < 0 && s >= 0) || (prev >= 0 && s < 0)) crossings++;
    prev = s;
  }
  return (crossings / 2) * (sampleRate / frames);
}

function rms(samples) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  return Math.sqrt(sum / Math.max(1, samples.length));
}

/**
 * Attaches an RTCAudioSink/RTCVideoSink to every remote track of `pc` and counts what arrives:
 * `audio` (callbacks), `audioLoud` (callbacks with RMS > 500, i.e. not silence), `audioHz` (the
 * last loud callback's estimated frequency), `video` (frames), `lastLuma` (average Y of the last
 * frame), `lastSize`, and `kinds` (the kinds ontrack fired for).
 */
export class Receiver {
  constructor(pc) {
    this.pc = pc;
    this.kinds = [];
    this.sinks = [];
    this.audio = 0;
    this.audioLoud = 0;
    this.audioHz = [];
    this.video = 0;
    this.lastLuma = null;
    this.lastSize = null;
    pc.addEventListener('track', (ev) => this.onTrack(ev.track));
  }

  onTrack(track) {
    this.kinds.push(track.kind);
    if (track.kind === 'audio') {
      const sink = new nonstandard.RTCAudioSink(track);
      sink.ondata = (d) => {
        this.audio++;
        const samples = d.samples;
        if (samples && samples.length && rms(samples) > 500) {
          this.audioLoud++;
          const hz = zeroCrossingHz(samples, d.channelCount || 1, d.sampleRate || SAMPLE_RATE);
          this.audioHz.push(hz);
          if (this.audioHz.length > 200) this.audioHz.shift();
        }
      };
      this.sinks.push(sink);
    } else if (track.kind === 'video') {
      const sink = new nonstandard.RTCVideoSink(track);
      sink.onframe = ({ frame }) => {
        this.video++;
        // Sample every 7th luma byte: the average is what matters, not each pixel.
        const ySize = frame.width * frame.height;
        let sum = 0;
        let n = 0;
        for (let i = 0; i < ySize; i += 7) {
          sum += frame.data[i];
          n++;
        }
        this.lastLuma = sum / n;
        this.lastSize = `${frame.width}x${frame.height}`;
      };
      this.sinks.push(sink);
    }
  }

  /** Median of the recent loud audio callbacks' frequency estimates (null if none). */
  medianHz() {
    if (this.audioHz.length === 0) return null;
    const s = [...this.audioHz].sort((x, y) => x - y);
    return s[Math.floor(s.length / 2)];
  }

  summary() {
    return {
      kinds: this.kinds,
      audio: this.audio,
      audioLoud: this.audioLoud,
      audioHz: this.medianHz() === null ? null : Math.round(this.medianHz()),
      video: this.video,
      lastLuma: this.lastLuma === null ? null : Math.round(this.lastLuma),
      lastSize: this.lastSize,
    };
  }

  stop() {
    for (const s of this.sinks) {
      try {
        s.stop();
      } catch {
        // already stopped
      }
    }
    this.sinks = [];
  }
}

/**
 * Creates an RTCPeerConnection with synthetic media attached and a Receiver on it.
 * `start: false` adds the tracks but feeds them nothing (cheaper, for signalling-only calls).
 */
export function mediaPeer({ media = {}, config = {}, start = true } = {}) {
  guardExit();
  const pc = new RTCPeerConnection({ iceServers: [], ...config });
  const source = new SyntheticMedia(media);
  const stream = new wrtc.MediaStream([source.audioTrack, source.videoTrack]);
  pc.addTrack(source.audioTrack, stream);
  pc.addTrack(source.videoTrack, stream);
  const receiver = new Receiver(pc);
  if (start) source.start();
  let closed = false;
  return {
    pc,
    source,
    receiver,
    close() {
      if (closed) return;
      closed = true;
      source.stop();
      receiver.stop();
      try {
        pc.close();
      } catch {
        // already closed
      }
    },
  };
}

/**
 * One guest's side of a call: an RTCPeerConnection with synthetic media, signalled to tandem over
 * `socket` with the `webrtc:*` events. `config` is added to its RTCConfiguration (e.g. the
 * `iceServers` of `/api/ice-servers` and `iceTransportPolicy: 'relay'`).
 *
 * - `offer()`: createOffer → setLocalDescription → emit `webrtc:offer { sdp }` (ack must be ok);
 *   local candidates are trickled as `webrtc:ice-candidate { candidate, sdpMid, sdpMLineIndex }`
 *   (those found before the offer went out are sent right after it).
 * - tandem's `webrtc:answer { sdp }` → setRemoteDescription; its `webrtc:ice-candidate` →
 *   addIceCandidate (queued until a remote description is set).
 * - tandem's `webrtc:offer { sdp }` (renegotiation) → setRemoteDescription, createAnswer,
 *   setLocalDescription, emit `webrtc:answer { sdp }`.
 *
 * Every problem (a refused ack, a failed SDP operation) is recorded in `errors`; `log` keeps a
 * timeline of signalling steps for failure messages.
 */
export class CallPeer {
  constructor(socket, { name = 'peer', media = {}, start = true, ackCandidates = true, config = {} } = {}) {
    this.socket = socket;
    this.name = name;
    this.ackCandidates = ackCandidates;
    this.errors = [];
    this.log = [];
    this.t0 = Date.now();
    this.peer = mediaPeer({ media, start, config });
    this.pc = this.peer.pc;
    this.receiver = this.peer.receiver;
    this.offerSent = false;
    this.pendingLocal = [];
    this.pendingRemote = [];
    this.localCandidates = 0;
    this.remoteCandidates = 0;
    this.answersReceived = 0;
    this.offersReceived = 0;
    this.chain = Promise.resolve(); // serialises SDP operations
    this.closed = false;

    this.pc.addEventListener('icecandidate', (ev) => {
      const c = ev.candidate;
      if (!c || !c.candidate) return;
      const payload = { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex };
      this.localCandidates++;
      if (this.offerSent) this.sendCandidate(payload);
      else this.pendingLocal.push(payload);
    });
    this.pc.addEventListener('connectionstatechange', () => this.note(`connectionState=${this.pc.connectionState}`));
    this.pc.addEventListener('iceconnectionstatechange', () => this.note(`iceConnectionState=${this.pc.iceConnectionState}`));

    this.onAnswer = (msg) => this.enqueue('remote answer', () => this.handleAnswer(msg));
    this.onOffer = (msg) => this.enqueue('remote offer', () => this.handleOffer(msg));
    this.onCandidate = (msg) => this.handleRemoteCandidate(msg);
    socket.on('webrtc:answer', this.onAnswer);
    socket.on('webrtc:offer', this.onOffer);
    socket.on('webrtc:ice-candidate', this.onCandidate);
  }

  note(what) {
    this.log.push(`+${Date.now() - this.t0}ms ${what}`);
  }

  fail(what) {
    this.note(`ERROR ${what}`);
    this.errors.push(what);
  }

  enqueue(what, fn) {
    this.chain = this.chain.then(async () => {
      if (this.closed) return;
      try {
        await fn();
      } catch (err) {
        this.fail(`${what}: ${err && err.message ? err.message : err}`);
      }
    });
    return this.chain;
  }

  emitAck(event, payload) {
    return new Promise((resolve) => {
      this.socket.timeout(10_000).emit(event, payload, (err, ack) => {
        if (err) resolve({ ok: false, error: { code: 'ack_timeout', message: String(err.message || err) } });
        else resolve(ack);
      });
    });
  }

  sendCandidate(payload) {
    if (!this.ackCandidates) {
      this.socket.emit('webrtc:ice-candidate', payload);
      return;
    }
    this.emitAck('webrtc:ice-candidate', payload).then((ack) => {
      if (!ack || ack.ok !== true) this.fail(`webrtc:ice-candidate ${payload.candidate} refused: ${JSON.stringify(ack)}`);
    });
  }

  /** Creates and sends the offer; resolves with the ack (asserted ok unless `expectOk` is false). */
  async offer({ expectOk = true } = {}) {
    let ack;
    await this.enqueue('local offer', async () => {
      const offer = await this.pc.createOffer();
      await this.pc.setLocalDescription(offer);
      this.note('emit webrtc:offer');
      const pending = this.emitAck('webrtc:offer', { sdp: this.pc.localDescription.sdp });
      // Emitted after the offer, in order on the same socket.
      this.offerSent = true;
      for (const c of this.pendingLocal.splice(0)) this.sendCandidate(c);
      ack = await pending;
      this.note(`webrtc:offer ack ${JSON.stringify(ack)}`);
    });
    if (expectOk) {
      assert.ok(ack && ack.ok === true, `${this.name}: webrtc:offer ack: ${JSON.stringify(ack)}; log:\n${this.log.join('\n')}`);
    }
    return ack;
  }

  async handleAnswer(msg) {
    this.answersReceived++;
    this.note(`got webrtc:answer (${this.pc.signalingState})`);
    if (!msg || typeof msg.sdp !== 'string') throw new Error(`webrtc:answer without sdp: ${JSON.stringify(msg)}`);
    await this.pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
    await this.flushRemoteCandidates();
  }

  async handleOffer(msg) {
    this.offersReceived++;
    this.note(`got webrtc:offer (${this.pc.signalingState})`);
    if (!msg || typeof msg.sdp !== 'string') throw new Error(`webrtc:offer without sdp: ${JSON.stringify(msg)}`);
    await this.pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    await this.flushRemoteCandidates();
    const answer = await this.pc.createAnswer();
    await this.pc.setLocalDescription(answer);
    this.note('emit webrtc:answer');
    const ack = await this.emitAck('webrtc:answer', { sdp: this.pc.localDescription.sdp });
    this.note(`webrtc:answer ack ${JSON.stringify(ack)}`);
    if (!ack || ack.ok !== true) this.fail(`webrtc:answer refused: ${JSON.stringify(ack)}`);
    // Candidates gathered for a server-initiated negotiation go out now too.
    this.offerSent = true;
    for (const c of this.pendingLocal.splice(0)) this.sendCandidate(c);
  }

  handleRemoteCandidate(msg) {
    this.remoteCandidates++;
    if (!msg || typeof msg.candidate !== 'string') {
      this.fail(`webrtc:ice-candidate from server without candidate: ${JSON.stringify(msg)}`);
      return;
    }
    this.note(`got candidate ${msg.candidate}`);
    this.pendingRemote.push(msg);
    if (this.pc.remoteDescription) this.enqueue('addIceCandidate', () => this.flushRemoteCandidates());
  }

  async flushRemoteCandidates() {
    if (!this.pc.remoteDescription) return;
    for (const c of this.pendingRemote.splice(0)) {
      const init = { candidate: c.candidate, sdpMid: c.sdpMid ?? undefined, sdpMLineIndex: c.sdpMLineIndex ?? undefined };
      if (init.sdpMid === undefined && init.sdpMLineIndex === undefined) init.sdpMLineIndex = 0;
      await this.pc.addIceCandidate(init);
    }
  }

  summary() {
    return {
      name: this.name,
      connectionState: this.pc.connectionState,
      iceConnectionState: this.pc.iceConnectionState,
      signalingState: this.pc.signalingState,
      localCandidates: this.localCandidates,
      remoteCandidates: this.remoteCandidates,
      answersReceived: this.answersReceived,
      offersReceived: this.offersReceived,
      received: this.receiver.summary(),
      errors: this.errors,
    };
  }

  describe() {
    return `${JSON.stringify(this.summary())}\n  ${this.log.slice(-40).join('\n  ')}`;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.socket.off('webrtc:answer', this.onAnswer);
    this.socket.off('webrtc:offer', this.onOffer);
    this.socket.off('webrtc:ice-candidate', this.onCandidate);
    this.peer.close();
  }
}
