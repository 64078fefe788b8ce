// Sanity check of the test suite's own WebRTC stack (@roamhq/wrtc), without tandem: two
// RTCPeerConnections in this process, connected to each other over loopback, each sending
// synthetic audio and video and receiving the other's. When this fails, the call tests'
// failures say nothing about the server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mediaPeer, until } from './media.mjs';

test('@roamhq/wrtc: two local peer connections exchange audio and video over loopback', async (t) => {
  const a = mediaPeer({ media: { toneHz: 300, luma: 60 } });
  const b = mediaPeer({ media: { toneHz: 1200, luma: 190 } });
  t.after(() => {
    a.close();
    b.close();
  });
  a.pc.addEventListener('icecandidate', (ev) => {
    if (ev.candidate && ev.candidate.candidate) b.pc.addIceCandidate(ev.candidate).catch(() => {});
  });
  b.pc.addEventListener('icecandidate', (ev) => {
    if (ev.candidate && ev.candidate.candidate) a.pc.addIceCandidate(ev.candidate).catch(() => {});
  });
  const offer = await a.pc.createOffer();
  await a.pc.setLocalDescription(offer);
  await b.pc.setRemoteDescription(a.pc.localDescription);
  const answer = await b.pc.createAnswer();
  await b.pc.setLocalDescription(answer);
  await a.pc.setRemoteDescription(b.pc.localDescription);

  const state = () =>
    JSON.stringify({
      a: { conn: a.pc.connectionState, ice: a.pc.iceConnectionState, got: a.receiver.summary() },
      b: { conn: b.pc.connectionState, ice: b.pc.iceConnectionState, got: b.receiver.summary() },
    });
  await until(
    () =>
      a.pc.connectionState === 'connected' &&
      b.pc.connectionState === 'connected' &&
      a.receiver.audioLoud >= 50 &&
      b.receiver.audioLoud >= 50 &&
      a.receiver.video >= 10 &&
      b.receiver.video >= 10,
    20_000,
    state,
  );
  assert.deepEqual([...a.receiver.kinds].sort(), ['audio', 'video'], state());
  assert.deepEqual([...b.receiver.kinds].sort(), ['audio', 'video'], state());
  // Each side gets the other's content: b's grey level and tone at a, a's at b.
  assert.ok(Math.abs(a.receiver.lastLuma - 190) < 25, `a should see luma ~190: ${state()}`);
  assert.ok(Math.abs(b.receiver.lastLuma - 60) < 25, `b should see luma ~60: ${state()}`);
  assert.ok(Math.abs(a.receiver.medianHz() - 1200) < 150, `a should hear ~1200 Hz: ${state()}`);
  assert.ok(Math.abs(b.receiver.medianHz() - 300) < 60, `b should hear ~300 Hz: ${state()}`);
});
