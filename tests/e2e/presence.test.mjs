// Presence and reconnects: away/online, the grace period, queued messages, socket limits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  serverFor,
  connect,
  waitFor,
  waitForEntry,
  expectNone,
  emitAck,
  assertOk,
  assertRefused,
  assertRefusedConnect,
  guestSocket,
  pair,
  sendText,
  received,
  sleep,
} from './harness.mjs';

const GRACE = ['--grace-period-secs', '2'];

test('partner away, messages queued, back within the grace: online, queued messages in order, then delivered', async (t) => {
  const { url } = await serverFor(t, GRACE);
  const { a, b, ga, gb, roomId } = await pair(url);
  b.disconnect();
  assert.deepEqual(await waitFor(a, 'partner:presence'), { roomId, status: 'away' });

  const acks = [];
  for (const text of ['first', 'second', 'third']) acks.push(await sendText(a, text));
  for (const ack of acks) await waitFor(a, 'chat:message:sent', 2000, (x) => x.id === ack.id);
  await expectNone(a, 'chat:message:delivered', 300);

  const b2 = await connect(url, gb.token);
  const est = await waitFor(b2, 'connection:established');
  assert.equal(est.sessionId, gb.sessionId);
  assert.equal(est.state, 'in_chat');
  assert.deepEqual(est.room, { roomId, partner: { username: ga.username } });
  assert.deepEqual(await waitFor(a, 'partner:presence'), { roomId, status: 'online' });

  const got = [];
  for (let i = 0; i < 3; i++) got.push(await waitFor(b2, 'chat:message', 5000, (m) => m.from === 'partner'));
  assert.deepEqual(got.map((m) => m.content), ['first', 'second', 'third']);
  assert.deepEqual(got.map((m) => m.id), acks.map((x) => x.id));
  for (const m of got) assert.equal(m.roomId, roomId);

  for (const ack of acks) await waitFor(a, 'chat:message:delivered', 5000, (x) => x.id === ack.id);
  // Each message is delivered once.
  await sleep(200);
  for (const ack of acks) assert.equal(received(a, 'chat:message:delivered', (x) => x.id === ack.id).length, 1);

  // The chat goes on normally.
  const back = await sendText(b2, 'I am back');
  await waitFor(a, 'chat:message', 5000, (m) => m.id === back.id);
});

test('partner away past the grace period: chat:ended disconnected; the returning guest is online', async (t) => {
  const { url } = await serverFor(t, GRACE);
  const { a, b, gb, roomId } = await pair(url);
  const droppedAt = Date.now();
  b.disconnect();
  await waitFor(a, 'partner:presence', 5000, (p) => p.status === 'away');
  const ended = await waitForEntry(a, 'chat:ended', 8000);
  assert.deepEqual(ended.payload, { roomId, reason: 'disconnected' });
  assert.ok(ended.at - droppedAt >= 1500, `chat ended ${ended.at - droppedAt} ms after the drop, inside the 2 s grace`);
  const sys = await waitFor(a, 'chat:message', 2000, (m) => m.from === 'system');
  assert.equal(sys.type, 'system');
  assertRefused(await emitAck(a, 'chat:message', { clientId: 'c', type: 'text', content: 'anyone?' }), 'not_in_chat');

  const b2 = await connect(url, gb.token);
  const est = await waitFor(b2, 'connection:established');
  assert.equal(est.state, 'online');
  assert.ok(est.room === undefined || est.room === null, 'no room after the chat ended');
});

test('only the last socket of a guest makes it away', async (t) => {
  const { url } = await serverFor(t, GRACE);
  const { a, b, gb, roomId } = await pair(url);
  const b2 = await connect(url, gb.token);
  await waitFor(b2, 'connection:established');
  b.disconnect();
  await expectNone(a, 'partner:presence', 700);
  b2.disconnect();
  assert.deepEqual(await waitFor(a, 'partner:presence'), { roomId, status: 'away' });
});

test('a partner dropping while typing: typing:stop at once', async (t) => {
  const { url } = await serverFor(t, GRACE);
  const { a, b, roomId } = await pair(url);
  assertOk(await emitAck(b, 'typing:start'));
  await waitFor(a, 'typing:start');
  const droppedAt = Date.now();
  b.disconnect();
  const stop = await waitForEntry(a, 'typing:stop', 3000);
  assert.deepEqual(stop.payload, { roomId });
  assert.ok(stop.at - droppedAt < 1500, `typing:stop came ${stop.at - droppedAt} ms after the drop`);
});

test('--away-queue-max 3: the 4th message to an away partner → partner_away_queue_full', async (t) => {
  const { url } = await serverFor(t, ['--grace-period-secs', '30', '--away-queue-max', '3']);
  const { a, b, gb } = await pair(url);
  b.disconnect();
  await waitFor(a, 'partner:presence', 5000, (p) => p.status === 'away');
  const acks = [];
  for (const text of ['q1', 'q2', 'q3']) acks.push(await sendText(a, text));
  assertRefused(
    await emitAck(a, 'chat:message', { clientId: 'q4', type: 'text', content: 'q4' }),
    'partner_away_queue_full',
  );
  const b2 = await connect(url, gb.token);
  await waitFor(b2, 'connection:established');
  const got = [];
  for (let i = 0; i < 3; i++) got.push(await waitFor(b2, 'chat:message', 5000, (m) => m.from === 'partner'));
  assert.deepEqual(got.map((m) => m.content), ['q1', 'q2', 'q3']);
  await expectNone(b2, 'chat:message', 300, (m) => m.content === 'q4');
  // With the partner back, sending works again.
  const after = await sendText(a, 'after');
  await waitFor(b2, 'chat:message', 5000, (m) => m.id === after.id);
});

test('--max-sockets-per-guest 2: the third socket → rate_limited; a freed slot can be reused', async (t) => {
  const { url } = await serverFor(t, ['--max-sockets-per-guest', '2']);
  const A = await guestSocket(url);
  const s2 = await connect(url, A.guest.token);
  await assertRefusedConnect(url, A.guest.token, 'rate_limited');
  // Another guest is not affected.
  const B = await guestSocket(url);
  assert.ok(B.socket.connected);
  // Closing one socket frees a slot.
  s2.disconnect();
  let s3;
  const deadline = Date.now() + 3000;
  let lastErr;
  while (!s3 && Date.now() < deadline) {
    try {
      s3 = await connect(url, A.guest.token);
    } catch (err) {
      lastErr = err;
      await sleep(100);
    }
  }
  assert.ok(s3, `no socket after one was closed: ${lastErr?.message}`);
  assert.equal((await waitFor(s3, 'connection:established')).sessionId, A.guest.sessionId);
});

test('a searching guest whose sockets are gone is not paired while away, and still searches on return', async (t) => {
  const { url } = await serverFor(t, ['--grace-period-secs', '5']);
  const A = await guestSocket(url);
  assertOk(await emitAck(A.socket, 'match:start', {}));
  await waitFor(A.socket, 'match:searching');
  A.socket.disconnect();
  await sleep(200);
  const B = await guestSocket(url);
  const ackB = assertOk(await emitAck(B.socket, 'match:start', {}));
  assert.equal(ackB.state, 'searching', 'B was paired with the away guest');
  await expectNone(B.socket, 'match:found', 1000);
  const a2 = await connect(url, A.guest.token);
  const est = await waitFor(a2, 'connection:established');
  assert.ok(['searching', 'in_chat'].includes(est.state), `state after return within the grace: ${est.state}`);
});

test('a searching guest away past the grace period leaves the queue', async (t) => {
  const { url } = await serverFor(t, GRACE);
  const A = await guestSocket(url);
  assertOk(await emitAck(A.socket, 'match:start', {}));
  await waitFor(A.socket, 'match:searching');
  A.socket.disconnect();
  await sleep(3500);
  const a2 = await connect(url, A.guest.token);
  assert.equal((await waitFor(a2, 'connection:established')).state, 'online');
  // And nobody is paired with it.
  const B = await guestSocket(url);
  const ackB = assertOk(await emitAck(B.socket, 'match:start', {}));
  assert.equal(ackB.state, 'searching');
  await expectNone(B.socket, 'match:found', 500);
});
