// Stats: GET /api/stats and the realtime:stats event.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  serverFor,
  api,
  createGuest,
  connect,
  waitFor,
  waitForEntry,
  emitAck,
  assertOk,
  guestSocket,
  received,
  sleep,
  uname,
} from './harness.mjs';

// Polls GET /api/stats until `pred` holds (bounded); returns the last stats seen.
async function pollStats(url, pred, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  do {
    const res = await api(url, '/api/stats');
    assert.equal(res.status, 200);
    last = res.body;
    if (pred(last)) return last;
    await sleep(100);
  } while (Date.now() < deadline);
  return last;
}

// Waits (bounded) for a realtime:stats event satisfying `pred`; returns it, or the last seen.
async function awaitRealtime(socket, pred, timeoutMs = 5000) {
  try {
    return await waitFor(socket, 'realtime:stats', timeoutMs, pred);
  } catch {
    const all = received(socket, 'realtime:stats');
    return all[all.length - 1];
  }
}

test('two guests online, one searching; after pairing both connected', async (t) => {
  const { url } = await serverFor(t);
  const A = await guestSocket(url);
  const B = await guestSocket(url);
  // A third guest exists but is not connected: not online.
  await createGuest(url, uname('Offline'));
  assertOk(await emitAck(A.socket, 'match:start', {}));
  await waitFor(A.socket, 'match:searching');

  const want = (s) => s && s.onlineUsers === 2 && s.availableUsers === 1;
  const http = await pollStats(url, want);
  assert.ok(http.totalUsers >= 2, `totalUsers ${http.totalUsers}`);
  assert.equal(http.onlineUsers, 2, `http ${JSON.stringify(http)}`);
  assert.equal(http.availableUsers, 1, `http ${JSON.stringify(http)}`);
  assert.equal(http.connectedUsers, 0, `http ${JSON.stringify(http)}`);

  const rt = await awaitRealtime(B.socket, want);
  assert.ok(rt, 'no realtime:stats received');
  assert.ok(rt.totalUsers >= 2, `totalUsers ${rt.totalUsers}`);
  assert.equal(rt.onlineUsers, 2, `realtime ${JSON.stringify(rt)}`);
  assert.equal(rt.availableUsers, 1, `realtime ${JSON.stringify(rt)}`);

  assertOk(await emitAck(B.socket, 'match:start', {}));
  await waitFor(A.socket, 'match:found');
  const paired = (s) => s && s.connectedUsers === 2;
  const rt2 = await awaitRealtime(A.socket, paired, 5000);
  assert.ok(rt2, 'no realtime:stats received after pairing');
  assert.equal(rt2.connectedUsers, 2, `realtime after pairing ${JSON.stringify(rt2)}`);
  assert.equal(rt2.availableUsers, 0, `realtime after pairing ${JSON.stringify(rt2)}`);
  assert.equal(rt2.onlineUsers, 2, `realtime after pairing ${JSON.stringify(rt2)}`);

  const http2 = await pollStats(url, paired);
  assert.equal(http2.connectedUsers, 2, `http after pairing ${JSON.stringify(http2)}`);
  assert.equal(http2.availableUsers, 0);
});

test('realtime:stats is sent on change, at most once per second', async (t) => {
  const { url } = await serverFor(t);
  const observer = await guestSocket(url);
  await waitFor(observer.socket, 'realtime:stats'); // the one sent on connect
  const toggler = await guestSocket(url);
  const startedAt = Date.now();
  // Change the stats every ~100 ms for 3 s.
  let searching = false;
  while (Date.now() - startedAt < 3000) {
    assertOk(await emitAck(toggler.socket, searching ? 'match:cancel' : 'match:start', ...(searching ? [] : [{}])));
    searching = !searching;
    await sleep(100);
  }
  await sleep(1200);
  const times = observer.socket.__log.filter((e) => e.event === 'realtime:stats' && e.at >= startedAt).map((e) => e.at);
  assert.ok(times.length >= 2, `only ${times.length} realtime:stats in 4 s of changes`);
  for (let i = 1; i < times.length; i++) {
    const gap = times[i] - times[i - 1];
    assert.ok(gap >= 600, `two realtime:stats ${gap} ms apart (${times.length} events)`);
  }
  assert.ok(times.length <= 6, `${times.length} realtime:stats in about 4.2 s`);
});

test('every new connection gets realtime:stats right away, even within a second of another', async (t) => {
  const { url } = await serverFor(t);
  const g1 = await createGuest(url, uname('Rt'));
  const g2 = await createGuest(url, uname('Rt'));
  const s1 = await connect(url, g1.token);
  const s2 = await connect(url, g2.token);
  const connectedAt = Date.now();
  const e1 = await waitForEntry(s1, 'realtime:stats', 2000);
  const e2 = await waitForEntry(s2, 'realtime:stats', 2000);
  assert.ok(e1.payload.onlineUsers >= 1);
  assert.ok(e2.payload.onlineUsers >= 1);
  assert.ok(e2.at - connectedAt < 800, `realtime:stats came ${e2.at - connectedAt} ms after the connect`);
});
