// Calls do not leak: one server, one pair of guests, many calls one after another (request,
// accept, both sides offer, call:end). The first calls carry real media until both sides receive
// the partner's audio and video; the rest stop at the offer/answer exchange to keep the test
// short, and send the offers the first call's peer connections made (the server makes a new
// media peer per call all the same; not churning libwebrtc peer connections keeps
// @roamhq/wrtc, which has crashed under that churn, out of the way). The server's resident memory (VmRSS) and open descriptors are read from /proc after a
// warm-up and at the end.
//
// TANDEM_E2E_CALLS (default 1000) and TANDEM_E2E_FULL_CALLS (default 20) change the counts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  serverFor,
  waitFor,
  emitAck,
  assertOk,
  pair,
  processStats,
  clearLog,
  received,
  sleep,
} from './harness.mjs';
import { CallPeer, until } from './media.mjs';

const CALLS = Number(process.env.TANDEM_E2E_CALLS ?? 1000);
const FULL_CALLS = Math.min(CALLS, Number(process.env.TANDEM_E2E_FULL_CALLS ?? 20));
const WARMUP = Math.min(CALLS, FULL_CALLS + 10); // baseline once both kinds of call have run
const RSS_GROWTH_LIMIT_KB = 30 * 1024;
const FD_SLACK = 2;

test(`${CALLS} calls one after another leave no memory or descriptors behind`, { timeout: 240_000 }, async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { a, b, roomId } = await pair(server.url);
  const peers = new Set();
  t.after(() => {
    for (const p of peers) p.close();
  });

  const describe = (pa, pb) =>
    `${pa ? `A: ${pa.describe()}\n` : ''}${pb ? `B: ${pb.describe()}\n` : ''}` +
    `a events: ${a.__log.map((e) => e.event).join(', ')}\nb events: ${b.__log.map((e) => e.event).join(', ')}\n` +
    `server log (tail):\n${server.output().slice(-4000)}`;

  let canned = null; // { a, b }: offers from the first call's peer connections

  async function cannedCall(what) {
    const [ra, rb] = await Promise.all([
      emitAck(a, 'webrtc:offer', { sdp: canned.a }),
      emitAck(b, 'webrtc:offer', { sdp: canned.b }),
    ]);
    assertOk(ra, `${what}: A webrtc:offer`);
    assertOk(rb, `${what}: B webrtc:offer`);
    const [ansA, ansB] = await Promise.all([waitFor(a, 'webrtc:answer'), waitFor(b, 'webrtc:answer')]);
    assert.match(ansA.sdp, /^v=0/, `${what}: A's answer`);
    assert.match(ansB.sdp, /^v=0/, `${what}: B's answer`);
    assertOk(await emitAck(a, 'call:end'), `${what}: call:end`);
    assert.equal((await waitFor(a, 'call:ended')).reason, 'hangup');
    assert.equal((await waitFor(b, 'call:ended')).reason, 'hangup');
    const errors = [...received(a, 'error'), ...received(b, 'error')];
    assert.deepEqual(errors, [], `${what}: error events`);
  }

  async function oneCall(i) {
    const full = i < FULL_CALLS || canned === null;
    const [caller, callee] = i % 2 === 0 ? [a, b] : [b, a];
    const what = `call #${i} (${full ? 'media' : 'offer/answer'})`;
    assertOk(await emitAck(caller, 'call:request', { video: true }), `${what}: call:request`);
    await waitFor(callee, 'call:incoming');
    assertOk(await emitAck(callee, 'call:accept'), `${what}: call:accept`);
    await waitFor(caller, 'call:accepted');
    await waitFor(callee, 'call:accepted');
    if (!full) {
      await cannedCall(`call #${i} (canned offer/answer)`);
      clearLog(a);
      clearLog(b);
      return;
    }

    const pa = new CallPeer(a, { name: `A#${i}`, media: { toneHz: 300, luma: 60 }, start: full });
    const pb = new CallPeer(b, { name: `B#${i}`, media: { toneHz: 1200, luma: 190 }, start: full });
    peers.add(pa);
    peers.add(pb);
    try {
      await Promise.all([pa.offer(), pb.offer()]);
      canned ??= { a: pa.pc.localDescription.sdp, b: pb.pc.localDescription.sdp };
      if (full) {
        await until(
          () =>
            [pa, pb].every(
              (p) => p.pc.connectionState === 'connected' && p.receiver.video >= 3 && p.receiver.audioLoud >= 10,
            ),
          20_000,
          () => `${what}: media did not flow both ways\n${describe(pa, pb)}`,
        );
      } else {
        await until(() => pa.answersReceived >= 1 && pb.answersReceived >= 1, 10_000, () => `${what}: no webrtc:answer\n${describe(pa, pb)}`);
      }
      assert.deepEqual([...pa.errors, ...pb.errors], [], `${what}: signalling errors\n${describe(pa, pb)}`);
      assertOk(await emitAck(i % 3 === 0 ? b : a, 'call:end'), `${what}: call:end`);
      assert.deepEqual(await waitFor(a, 'call:ended'), { roomId, reason: 'hangup' });
      assert.deepEqual(await waitFor(b, 'call:ended'), { roomId, reason: 'hangup' });
      const errors = [...received(a, 'error'), ...received(b, 'error')];
      assert.deepEqual(errors, [], `${what}: error events\n${describe(pa, pb)}`);
    } finally {
      pa.close();
      pb.close();
      peers.delete(pa);
      peers.delete(pb);
    }
    clearLog(a);
    clearLog(b);
  }

  const started = Date.now();
  let baseline = null;
  let peakKb = 0;
  for (let i = 0; i < CALLS; i++) {
    await oneCall(i);
    if ((i + 1) % 50 === 0 || i + 1 === WARMUP) {
      const s = processStats(server.pid);
      peakKb = Math.max(peakKb, s.rssKb);
      if (i + 1 === WARMUP) {
        await sleep(500);
        baseline = processStats(server.pid);
        t.diagnostic(`after ${WARMUP} calls (${Date.now() - started} ms): RSS ${baseline.rssKb} kB, ${baseline.fds} fds`);
      }
    }
  }
  const elapsed = Date.now() - started;
  await sleep(500);
  let end = processStats(server.pid);
  // Descriptors may close a moment after call:ended: give them a few seconds.
  const fdDeadline = Date.now() + 5000;
  while (end.fds > baseline.fds + FD_SLACK && Date.now() < fdDeadline) {
    await sleep(200);
    end = processStats(server.pid);
  }
  t.diagnostic(
    `${CALLS} calls in ${elapsed} ms (${(elapsed / CALLS).toFixed(1)} ms/call); RSS ${baseline.rssKb} → ${end.rssKb} kB ` +
      `(peak ${Math.max(peakKb, end.rssKb)} kB), fds ${baseline.fds} → ${end.fds}`,
  );
  assert.ok(
    end.rssKb - baseline.rssKb < RSS_GROWTH_LIMIT_KB,
    `server RSS grew by ${end.rssKb - baseline.rssKb} kB over ${CALLS - WARMUP} calls (limit ${RSS_GROWTH_LIMIT_KB} kB)`,
  );
  assert.ok(end.fds <= baseline.fds + FD_SLACK, `server holds ${end.fds} descriptors, ${baseline.fds} after the warm-up`);
  // The server still works: one more call rings.
  assertOk(await emitAck(a, 'call:request', { video: false }), 'call:request after the loop');
  await waitFor(b, 'call:incoming');
  assertOk(await emitAck(a, 'call:end'));
});
