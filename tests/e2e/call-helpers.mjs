// Helpers shared by the call tests (call*.test.mjs): the call set-up steps, SDP/stats readers,
// and CallPeer subclasses for a peer that moves to a new socket and restarts ICE, and for a peer
// that only uses the server's TCP candidates. Built on the public behaviour of media.mjs's
// CallPeer (its socket listeners onAnswer/onOffer/onCandidate, enqueue, emitAck, sendCandidate,
// pendingLocal/offerSent).
import assert from 'node:assert/strict';
import { waitFor, emitAck, assertOk } from './harness.mjs';
import { CallPeer } from './media.mjs';

const HEX = /^[0-9a-f]+$/;

// What each side sends, so that each can check it gets the partner's media and not its own.
export const A_MEDIA = { toneHz: 300, luma: 60 };
export const B_MEDIA = { toneHz: 1200, luma: 190 };

/** A requests a call, B gets call:incoming; resolves with the roomId. */
export async function request(a, b, roomId, video = true) {
  const ack = assertOk(await emitAck(a, 'call:request', { video }), 'call:request');
  assert.equal(typeof ack.roomId, 'string', `call:request ack: ${JSON.stringify(ack)}`);
  assert.match(ack.roomId, HEX);
  assert.equal(ack.roomId, roomId, 'the call belongs to the chat: same roomId');
  assert.deepEqual(await waitFor(b, 'call:incoming'), { roomId, video });
  return ack.roomId;
}

/** B accepts; both get call:accepted. */
export async function accept(a, b, roomId) {
  const ack = assertOk(await emitAck(b, 'call:accept'), 'call:accept');
  assert.equal(ack.roomId, roomId, `call:accept ack: ${JSON.stringify(ack)}`);
  assert.deepEqual(await waitFor(a, 'call:accepted'), { roomId });
  assert.deepEqual(await waitFor(b, 'call:accepted'), { roomId });
}

/**
 * Peers for an accepted call: A's a `PeerA` sending A_MEDIA, B's a `PeerB` sending B_MEDIA, both
 * closed when `t` ends. Both send their offers; resolves with [pa, pb].
 */
export async function offeringPeers(t, a, b, { PeerA = CallPeer, PeerB = CallPeer } = {}) {
  const pa = new PeerA(a, { name: 'A', media: A_MEDIA });
  const pb = new PeerB(b, { name: 'B', media: B_MEDIA });
  t.after(() => {
    pa.close();
    pb.close();
  });
  await Promise.all([pa.offer(), pb.offer()]);
  return [pa, pb];
}

/** Index of the first `event` in the socket's log (matching `pred`), -1 if none. */
export function logIndex(socket, event, pred = () => true) {
  return socket.__log.findIndex((e) => e.event === event && pred(e.payload));
}

/** The socket's events so far, in order (error events with their payload). */
export function events(socket) {
  return socket.__log
    .map((e) => (e.event === 'error' || e.event === 'partner:presence' || e.event === 'call:ended' ? `${e.event}${JSON.stringify(e.payload)}` : e.event))
    .join(', ');
}

/** A state dump for failure messages: the peers, the sockets' events, the server's log tail. */
export function dump(server, peers, sockets = {}) {
  const parts = peers.map((p) => `${p.name}: ${p.describe()}`);
  for (const [name, s] of Object.entries(sockets)) parts.push(`${name} events: ${events(s)}`);
  parts.push(`server log (tail):\n${server.output().slice(-4000)}`);
  return parts.join('\n');
}

/** Both sides connected, each receiving the other's audio and video. */
export function mediaFlowing(pa, pb, { audio = 50, video = 15 } = {}) {
  return [pa, pb].every(
    (p) => p.pc.connectionState === 'connected' && p.receiver.audioLoud >= audio && p.receiver.video >= video,
  );
}

/** What a peer's Receiver has counted so far: `{ audioLoud, video }`. */
export function counts(p) {
  return { audioLoud: p.receiver.audioLoud, video: p.receiver.video };
}

/** Every peer is connected and got at least `audio` more loud audio callbacks and `video` more frames than in `since` (same order). */
export function grewBy(peers, since, { audio = 100, video = 20 } = {}) {
  return peers.every(
    (p, i) =>
      p.pc.connectionState === 'connected' &&
      p.receiver.audioLoud - since[i].audioLoud >= audio &&
      p.receiver.video - since[i].video >= video,
  );
}

/** The first `a=<attr>:` value of an SDP (session or media level), or null. */
export function sdpAttr(sdp, attr) {
  const m = new RegExp(`^a=${attr}:(.*)$`, 'm').exec(sdp ?? '');
  return m ? m[1].trim() : null;
}

/** `a=candidate:` lines (without `a=`) of an SDP. */
export function sdpCandidates(sdp) {
  return (sdp ?? '')
    .split(/\r?\n/)
    .filter((l) => l.startsWith('a=candidate:'))
    .map((l) => l.slice(2));
}

/**
 * Parses `candidate:<foundation> <component> <transport> <priority> <ip> <port> typ <type> ...`
 * (with or without a leading `a=`) into `{ transport, ip, port, type, tcptype }` (transport in
 * lower case), or null.
 */
export function parseCandidate(line) {
  const m = /^(?:a=)?candidate:\S+ \d+ (\S+) \d+ (\S+) (\d+) typ (\S+)(.*)$/i.exec((line ?? '').trim());
  if (!m) return null;
  const tcptype = /\btcptype (\S+)/.exec(m[5]);
  return { transport: m[1].toLowerCase(), ip: m[2], port: Number(m[3]), type: m[4], tcptype: tcptype ? tcptype[1] : null };
}

/**
 * The transport's ICE/DTLS view from `pc.getStats()`: `{ transport, pair, local, remote }` for the
 * selected candidate pair (each null when the stats do not have it).
 */
export async function selectedPair(pc) {
  const stats = await pc.getStats();
  let transport = null;
  for (const s of stats.values()) if (s.type === 'transport') transport = s;
  let pair = transport && transport.selectedCandidatePairId ? stats.get(transport.selectedCandidatePairId) ?? null : null;
  if (!pair) {
    // Fall back to the nominated, succeeded pair.
    for (const s of stats.values()) if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
  }
  const local = pair ? stats.get(pair.localCandidateId) ?? null : null;
  const remote = pair ? stats.get(pair.remoteCandidateId) ?? null : null;
  return { transport, pair, local, remote };
}

/**
 * A CallPeer that can move to another socket (the guest's new Socket.IO connection after a
 * reconnect) while keeping its RTCPeerConnection, and restart ICE with a new offer.
 */
export class ResumablePeer extends CallPeer {
  /** Stops listening on the current socket and signals over `socket` from now on. */
  rebind(socket) {
    this.socket.off('webrtc:answer', this.onAnswer);
    this.socket.off('webrtc:offer', this.onOffer);
    this.socket.off('webrtc:ice-candidate', this.onCandidate);
    this.socket = socket;
    socket.on('webrtc:answer', this.onAnswer);
    socket.on('webrtc:offer', this.onOffer);
    socket.on('webrtc:ice-candidate', this.onCandidate);
    this.note('rebound to a new socket');
  }

  /**
   * createOffer(options) → setLocalDescription → `webrtc:offer { sdp }` on the current socket;
   * the candidates gathered meanwhile go out right after the offer. Resolves with the ack.
   */
  async offerWith(options = {}) {
    let ack;
    let sdp;
    await this.enqueue(`local offer ${JSON.stringify(options)}`, async () => {
      this.offerSent = false; // hold new candidates until the offer is out
      const offer = await this.pc.createOffer(options);
      await this.pc.setLocalDescription(offer);
      sdp = this.pc.localDescription.sdp;
      this.note(`emit webrtc:offer ${JSON.stringify(options)}`);
      const pending = this.emitAck('webrtc:offer', { sdp });
      this.offerSent = true;
      for (const c of this.pendingLocal.splice(0)) this.sendCandidate(c);
      ack = await pending;
      this.note(`webrtc:offer ack ${JSON.stringify(ack)}`);
    });
    assert.ok(ack && ack.ok === true, `${this.name}: webrtc:offer ${JSON.stringify(options)} ack: ${JSON.stringify(ack)}; log:\n${this.log.join('\n')}`);
    return { ack, sdp };
  }
}

/**
 * A CallPeer that never uses the server's UDP candidates: every `a=candidate:` line whose
 * transport is `udp` is removed from the server's answers (and offers) before
 * setRemoteDescription, and trickled `webrtc:ice-candidate` events for udp candidates are
 * ignored. `serverSdps` keeps the descriptions as the server sent them; `droppedCandidates`
 * counts what was filtered out.
 */
export class TcpOnlyPeer extends CallPeer {
  constructor(socket, opts) {
    super(socket, opts);
    this.serverSdps = [];
    this.droppedCandidates = 0;
    this.keptCandidates = [];
  }

  mungeSdp(sdp) {
    this.serverSdps.push(sdp);
    const eol = sdp.includes('\r\n') ? '\r\n' : '\n';
    const lines = sdp.split(eol).filter((l) => {
      if (!l.startsWith('a=candidate:')) return true;
      const c = parseCandidate(l);
      if (c && c.transport === 'udp') {
        this.droppedCandidates++;
        return false;
      }
      this.keptCandidates.push(l);
      return true;
    });
    return lines.join(eol);
  }

  handleAnswer(msg) {
    if (msg && typeof msg.sdp === 'string') msg = { ...msg, sdp: this.mungeSdp(msg.sdp) };
    return super.handleAnswer(msg);
  }

  handleOffer(msg) {
    if (msg && typeof msg.sdp === 'string') msg = { ...msg, sdp: this.mungeSdp(msg.sdp) };
    return super.handleOffer(msg);
  }

  handleRemoteCandidate(msg) {
    const c = msg && typeof msg.candidate === 'string' ? parseCandidate(msg.candidate) : null;
    if (c && c.transport === 'udp') {
      this.droppedCandidates++;
      this.note(`ignored udp candidate ${msg.candidate}`);
      return;
    }
    super.handleRemoteCandidate(msg);
  }
}
