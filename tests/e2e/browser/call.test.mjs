// Calls in the browser: the web client's one peer connection to tandem's SFU, with Chromium's fake
// camera (a 20 fps test pattern) and microphone (a beep). Media is checked with getStats() of the
// pages' own RTCPeerConnections (window.__pcs, recorded by an init script; see browser.mjs):
// decoded frames at a real frame rate, audio packets, and the selected candidate pair ending at
// tandem's media port on 127.0.0.1 (so the media went through the SFU, never peer to peer).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { serverFor } from '../harness.mjs';
import {
  launchBrowser, chatPair, screenshot, waitCall, waitUntil, pcStats, inbound, outbound, selectedPair, summarize,
  report, attr, text, sleep, WAIT_MS,
  until,
} from './browser.mjs';

let b;
before(async () => {
  b = await launchBrowser();
});
after(() => b?.close());

const FAKE_CAMERA_FPS = 20;
const MEASURE_MS = 5000;


/** Waits until the page decodes the partner's video, then counts decoded frames over MEASURE_MS. */
async function measureVideo(g) {
  await until(
    async () => (inbound(await pcStats(g), 'video')?.framesDecoded ?? 0) > 0,
    WAIT_MS,
    async () => `${g.name} decodes no video: ${summarize(await pcStats(g))}\n${await report(g)}`,
  );
  await sleep(1000); // past the first keyframe
  const s0 = await pcStats(g);
  await sleep(MEASURE_MS);
  const s1 = await pcStats(g);
  const v0 = inbound(s0, 'video');
  const v1 = inbound(s1, 'video');
  assert.ok(v0 && v1, `${g.name}: no inbound video report: ${summarize(s1)}`);
  const elapsed = (v1.timestamp - v0.timestamp) / 1000;
  return { frames: v1.framesDecoded - v0.framesDecoded, elapsed, s0, s1 };
}

/** Asserts that the page's selected candidate pair ends at tandem's UDP media port on 127.0.0.1. */
function assertThroughSfu(g, stats, server) {
  const { pair, remote, local } = selectedPair(stats);
  assert.ok(pair, `${g.name}: no selected candidate pair: ${summarize(stats)}`);
  assert.ok(remote, `${g.name}: the selected pair has no remote candidate report: ${JSON.stringify(pair)}`);
  const address = remote.address ?? remote.ip;
  assert.equal(address, '127.0.0.1', `${g.name}: remote candidate ${JSON.stringify(remote)}`);
  assert.equal(remote.port, server.rtcUdpPort, `${g.name}: the media must go to tandem's UDP port ${server.rtcUdpPort}: remote ${JSON.stringify(remote)}, local ${JSON.stringify(local)}`);
  assert.equal(remote.protocol, 'udp', `${g.name}: remote candidate ${JSON.stringify(remote)}`);
  assert.equal(pair.state, 'succeeded', `${g.name}: selected pair ${JSON.stringify(pair)}`);
}

/**
 * Installs `sendingEnabled(kind)` in the page: whether the newest open peer connection sends an
 * enabled, live track of `kind` (false when the sender has no track or a disabled one).
 */
async function installSendingEnabled(g) {
  await g.page.evaluate(() => {
    window.sendingEnabled = (kind) => {
      const pcs = (window.__pcs || []).filter((pc) => pc.connectionState !== 'closed');
      const pc = pcs[pcs.length - 1];
      if (!pc) return null;
      const senders = pc.getTransceivers().filter((tr) => tr.receiver.track?.kind === kind).map((tr) => tr.sender);
      return senders.some((s) => s.track && s.track.enabled && s.track.readyState === 'live');
    };
  });
}

/** Every peer connection the page made is closed. */
function waitPcsClosed(g) {
  return waitUntil(g, 'every RTCPeerConnection closed', () => (window.__pcs || []).every((pc) => pc.connectionState === 'closed'));
}

test('a video call through tandem: ringing, accept, both connected, real frame rate and audio both ways through the SFU, hang-up', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { A, B } = await chatPair(b, server, t);
  assert.equal(await attr(A, '#call', 'data-state'), 'idle', `A's call panel before any call:\n${await report(A)}`);

  await A.page.click('#call-video');
  await waitCall(A, ['calling', 'connecting', 'connected']);
  await waitCall(B, 'ringing');
  assert.ok(((await text(B, '#call-status')) ?? '').length > 0, `B's #call-status says nothing while ringing:\n${await report(B)}`);
  await screenshot(B.page, 'call-ringing');
  await B.page.click('#call-accept');
  await waitCall(A, 'connected');
  await waitCall(B, 'connected');

  // Each side decodes the partner's video at (well above half) the fake camera's frame rate.
  const [ma, mb] = await Promise.all([measureVideo(A), measureVideo(B)]);
  for (const [g, m] of [[A, ma], [B, mb]]) {
    const floor = 0.5 * FAKE_CAMERA_FPS * m.elapsed;
    t.diagnostic(`${g.name}: ${m.frames} frames decoded in ${m.elapsed.toFixed(2)} s (${(m.frames / m.elapsed).toFixed(1)} fps); ${summarize(m.s1)}`);
    assert.ok(m.elapsed >= MEASURE_MS / 1000 - 0.5, `${g.name}: the stats window is ${m.elapsed} s`);
    assert.ok(m.frames > floor, `${g.name} decoded ${m.frames} frames in ${m.elapsed.toFixed(2)} s, expected more than ${floor.toFixed(0)}: ${summarize(m.s1)}`);
    // Audio arrives too, and keeps arriving.
    const a0 = inbound(m.s0, 'audio');
    const a1 = inbound(m.s1, 'audio');
    assert.ok((a1?.packetsReceived ?? 0) > 0, `${g.name} received no audio: ${summarize(m.s1)}`);
    assert.ok(a1.packetsReceived > (a0?.packetsReceived ?? 0), `${g.name}'s audio stopped: ${summarize(m.s0)} → ${summarize(m.s1)}`);
    assert.ok((outbound(m.s1, 'video')?.packetsSent ?? 0) > 0, `${g.name} sends no video: ${summarize(m.s1)}`);
    // The media went through tandem: the selected pair's remote end is its media port.
    assertThroughSfu(g, m.s1, server);
  }
  // The partner's stream plays in video#remote-video.
  for (const g of [A, B]) {
    await waitUntil(g, 'video#remote-video playing the partner', () => {
      const v = document.querySelector('video#remote-video');
      return !!v && v.srcObject && v.videoWidth > 0 && !v.paused && v.readyState >= 2;
    });
  }
  await screenshot(A.page, 'call-connected');
  await screenshot(B.page, 'call-connected-B');

  await installSendingEnabled(A);
  // Mute and camera off: the toggles say so (aria-pressed) and A's outgoing track of that kind is
  // off (disabled or removed); pressing again turns it back on.
  for (const [button, kind] of [['#call-mute', 'audio'], ['#call-camera', 'video']]) {
    assert.equal(await attr(A, button, 'aria-pressed'), 'false', `${button} before pressing`);
    await A.page.click(button);
    await waitUntil(A, `${button}[aria-pressed=true]`, (sel) => document.querySelector(sel)?.getAttribute('aria-pressed') === 'true', button);
    await waitUntil(A, `no live outgoing ${kind}`, (k) => window.sendingEnabled(k) === false, kind, WAIT_MS).catch(async (err) => {
      throw new Error(`${button} did not turn A's ${kind} off: ${err.message}`);
    });
    await A.page.click(button);
    await waitUntil(A, `${button}[aria-pressed=false]`, (sel) => document.querySelector(sel)?.getAttribute('aria-pressed') === 'false', button);
    await waitUntil(A, `live outgoing ${kind} again`, (k) => window.sendingEnabled(k) === true, kind);
  }

  // A hangs up: the call is over on both sides, the chat goes on, the peer connections close.
  await A.page.click('#call-hangup');
  await waitCall(A, ['idle', 'ended']);
  await waitCall(B, ['idle', 'ended']);
  await waitPcsClosed(A);
  await waitPcsClosed(B);
  assert.equal(await attr(A, '#app', 'data-view'), 'chat', 'the chat goes on after the call');
  assert.equal(await attr(B, '#app', 'data-view'), 'chat', 'the chat goes on after the call');
});

test('a reload during a video call: the call resumes with a new peer connection and video flows both ways again', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { A, B } = await chatPair(b, server, t);
  await A.page.click('#call-video');
  await waitCall(B, 'ringing');
  await B.page.click('#call-accept');
  await waitCall(A, 'connected');
  await waitCall(B, 'connected');
  await until(
    async () => (inbound(await pcStats(B), 'video')?.framesDecoded ?? 0) > 0,
    WAIT_MS,
    async () => `B decodes no video before the reload: ${summarize(await pcStats(B))}\n${await report(B)}`,
  );

  await A.page.reload({ waitUntil: 'load' });
  await waitUntil(A, '#app[data-view=chat]', () => document.querySelector('#app')?.getAttribute('data-view') === 'chat');
  await waitCall(A, 'connected');
  await waitCall(B, 'connected');
  const [ma, mb] = await Promise.all([measureVideo(A), measureVideo(B)]);
  for (const [g, m] of [[A, ma], [B, mb]]) {
    const floor = 0.5 * FAKE_CAMERA_FPS * m.elapsed;
    t.diagnostic(`${g.name} after A's reload: ${m.frames} frames in ${m.elapsed.toFixed(2)} s; ${summarize(m.s1)}`);
    assert.ok(m.frames > floor, `${g.name} decoded ${m.frames} frames in ${m.elapsed.toFixed(2)} s after A's reload, expected more than ${floor.toFixed(0)}: ${summarize(m.s1)}`);
    assert.ok((inbound(m.s1, 'audio')?.packetsReceived ?? 0) > (inbound(m.s0, 'audio')?.packetsReceived ?? 0), `${g.name}'s audio does not flow after A's reload: ${summarize(m.s1)}`);
    assertThroughSfu(g, m.s1, server);
  }
  // B kept its peer connection; A's page made a fresh one.
  assert.equal(await B.page.evaluate(() => window.__pcs.length), 1, 'B should keep its one peer connection');
  await screenshot(A.page, 'call-resumed-after-reload');
  await B.page.click('#call-hangup');
  await waitCall(A, ['idle', 'ended']);
  await waitCall(B, ['idle', 'ended']);
});

test('an audio call: audio flows both ways through the SFU, no video; the callee hangs up', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { A, B } = await chatPair(b, server, t);

  await B.page.click('#call-audio');
  await waitCall(A, 'ringing');
  await A.page.click('#call-accept');
  await waitCall(A, 'connected');
  await waitCall(B, 'connected');

  for (const g of [A, B]) {
    await until(
      async () => (inbound(await pcStats(g), 'audio')?.packetsReceived ?? 0) > 0,
      WAIT_MS,
      async () => `${g.name} receives no audio: ${summarize(await pcStats(g))}\n${await report(g)}`,
    );
  }
  const before0 = await Promise.all([pcStats(A), pcStats(B)]);
  await sleep(2000);
  const after1 = await Promise.all([pcStats(A), pcStats(B)]);
  [A, B].forEach((g, i) => {
    const p0 = inbound(before0[i], 'audio').packetsReceived;
    const p1 = inbound(after1[i], 'audio').packetsReceived;
    // Opus sends 50 packets a second; half of that over 2 s is a safe floor.
    assert.ok(p1 - p0 > 50, `${g.name}'s audio packets grew by only ${p1 - p0} in 2 s: ${summarize(after1[i])}`);
    assert.ok((inbound(after1[i], 'video')?.framesDecoded ?? 0) === 0, `an audio call decodes no video: ${summarize(after1[i])}`);
    assert.ok((outbound(after1[i], 'video')?.packetsSent ?? 0) === 0, `an audio call sends no video: ${summarize(after1[i])}`);
    assertThroughSfu(g, after1[i], server);
  });
  await screenshot(A.page, 'call-audio-connected');

  await A.page.click('#call-hangup');
  await waitCall(A, ['idle', 'ended']);
  await waitCall(B, ['idle', 'ended']);
  await waitPcsClosed(A);
  await waitPcsClosed(B);
});

test('a ringing call: the callee rejects it; the next one is cancelled by the caller; no media is set up', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { A, B } = await chatPair(b, server, t);

  await A.page.click('#call-video');
  await waitCall(B, 'ringing');
  await waitCall(A, 'calling');
  await B.page.click('#call-reject');
  await waitCall(A, ['idle', 'ended']);
  await waitCall(B, ['idle', 'ended']);

  // Calling again works; the caller cancels while it rings.
  await A.page.click('#call-audio');
  await waitCall(B, 'ringing');
  await A.page.click('#call-hangup');
  await waitCall(A, ['idle', 'ended']);
  await waitCall(B, ['idle', 'ended']);
  for (const g of [A, B]) {
    const open = await g.page.evaluate(() => (window.__pcs || []).filter((pc) => pc.connectionState === 'connected').length);
    assert.equal(open, 0, `${g.name} has a connected peer connection after calls that were never accepted:\n${await report(g)}`);
  }
  // The chat is untouched.
  assert.equal(await attr(A, '#app', 'data-view'), 'chat');
  assert.equal(await attr(B, '#app', 'data-view'), 'chat');
});
