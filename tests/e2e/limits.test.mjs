// Limits: per-event rate limits, flood disconnects, oversize messages, HTTP limits, unknown events.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  serverFor,
  api,
  assertHttpError,
  connect,
  waitFor,
  expectNone,
  emitAck,
  assertOk,
  assertRefused,
  waitDisconnect,
  createGuest,
  guestSocket,
  pair,
  sendText,
  sleep,
  uname,
} from './harness.mjs';

function msg(i) {
  return { clientId: `burst-${i}`, type: 'text', content: `burst ${i}` };
}

test('--chat-messages-per-sec 5: a quick burst of 10 gets some rate_limited acks, the socket stays', async (t) => {
  const { url } = await serverFor(t, ['--chat-messages-per-sec', '5']);
  const { a, b } = await pair(url);
  const acks = await Promise.all(Array.from({ length: 10 }, (_, i) => emitAck(a, 'chat:message', msg(i))));
  const ok = acks.filter((x) => x.ok === true);
  const limited = acks.filter((x) => x.ok === false);
  assert.ok(limited.length >= 1, `no message was rate limited: ${JSON.stringify(acks)}`);
  for (const x of limited) assertRefused(x, 'rate_limited');
  assert.ok(ok.length >= 1, 'every message was refused');
  assert.ok(ok.length <= 6, `${ok.length} of 10 accepted at 5/s`);
  // B got exactly the accepted ones.
  for (const x of ok) await waitFor(b, 'chat:message', 5000, (m) => m.id === x.id);
  await sleep(300);
  assert.ok(a.connected, 'a small excess must not drop the connection');
  await expectNone(a, 'disconnect', 0);
  // After a second the bucket has refilled.
  await sleep(1100);
  await sendText(a, 'after the burst');
});

test('a sustained flood disconnects the flooding socket; the guest can connect again', async (t) => {
  const { url } = await serverFor(t, ['--chat-messages-per-sec', '5', '--flood-refusals', '20']);
  const { a, b, ga } = await pair(url);
  for (let i = 0; i < 300; i++) a.emit('chat:message', msg(i));
  await waitDisconnect(a, 5000);
  assert.equal(a.connected, false);
  // The partner is unaffected.
  assert.ok(b.connected, 'the partner was disconnected too');
  const a2 = await connect(url, ga.token);
  const est = await waitFor(a2, 'connection:established');
  assert.equal(est.sessionId, ga.sessionId);
});

test('--match-per-sec 1 --match-burst 3: quick match:* events get rate_limited', async (t) => {
  const { url } = await serverFor(t, ['--match-per-sec', '1', '--match-burst', '3']);
  const A = await guestSocket(url);
  const acks = [];
  for (let i = 0; i < 6; i++) {
    acks.push(await emitAck(A.socket, i % 2 === 0 ? 'match:start' : 'match:cancel', i % 2 === 0 ? {} : undefined));
  }
  const codes = acks.map((x) => (x.ok ? 'ok' : x.error?.code));
  assert.deepEqual(codes.slice(0, 3), ['ok', 'ok', 'ok'], `burst of 3: ${codes}`);
  assert.ok(codes.slice(3).includes('rate_limited'), `no rate_limited after the burst: ${codes}`);
  assert.ok(A.socket.connected);
});

test('typing:* is rate limited (--typing-per-sec 2)', async (t) => {
  const { url } = await serverFor(t, ['--typing-per-sec', '2']);
  const { a } = await pair(url);
  const acks = await Promise.all(Array.from({ length: 8 }, () => emitAck(a, 'typing:start')));
  const limited = acks.filter((x) => !x.ok);
  assert.ok(limited.length >= 1, `no typing:start was rate limited: ${JSON.stringify(acks)}`);
  for (const x of limited) assertRefused(x, 'rate_limited');
});

test('an oversize Socket.IO message (20 KiB) closes that connection only', async (t) => {
  const { url } = await serverFor(t);
  const { a, b } = await pair(url);
  const other = await pair(url);
  // Below the 16 KiB frame limit but over 2000 characters: refused, connection kept.
  assertRefused(await emitAck(a, 'chat:message', { clientId: 'big', type: 'text', content: 'x'.repeat(10_000) }), 'invalid_message');
  assert.ok(a.connected);
  a.emit('chat:message', { clientId: 'huge', type: 'text', content: 'x'.repeat(20 * 1024) });
  await waitDisconnect(a, 5000);
  await expectNone(b, 'chat:message', 200, (m) => m.from === 'partner');
  // Everybody else keeps working.
  assert.ok(b.connected, 'the partner socket was closed too');
  const m = await sendText(other.a, 'still fine');
  await waitFor(other.b, 'chat:message', 5000, (x) => x.id === m.id);
  const health = await api(url, '/healthz');
  assert.equal(health.status, 200);
});

test('--max-message-bytes raises the frame limit', async (t) => {
  const { url } = await serverFor(t, ['--max-message-bytes', '65536']);
  const { a } = await pair(url);
  // 20 KiB now fits in a frame: refused by content rules, not by closing the socket.
  assertRefused(await emitAck(a, 'chat:message', { clientId: 'big', type: 'text', content: 'x'.repeat(20 * 1024) }), 'invalid_message');
  assert.ok(a.connected);
});

test('--guest-creations-per-min 3: the 4th POST /api/guest → 429 rate_limited with Retry-After', async (t) => {
  const { url } = await serverFor(t, ['--guest-creations-per-min', '3']);
  for (let i = 0; i < 3; i++) await createGuest(url, uname('Lim'));
  const res = await api(url, '/api/guest', { method: 'POST', body: {} });
  assertHttpError(res, 429, 'rate_limited');
  const retry = res.headers.get('retry-after');
  assert.ok(retry !== null, 'no Retry-After header');
  assert.match(retry, /^\d+$/);
  assert.ok(Number(retry) >= 1, `Retry-After ${retry}`);
  // Other routes are not affected by the creation limit.
  assert.equal((await api(url, '/api/stats')).status, 200);
});

test('--http-requests-per-min 5: the 6th /api request → 429 rate_limited with Retry-After', async (t) => {
  const { url } = await serverFor(t, ['--http-requests-per-min', '5']);
  for (let i = 0; i < 5; i++) {
    const res = await api(url, '/api/stats');
    assert.equal(res.status, 200, `request ${i + 1}: ${res.status}`);
  }
  const res = await api(url, '/api/stats');
  assertHttpError(res, 429, 'rate_limited');
  assert.match(res.headers.get('retry-after') ?? '', /^\d+$/);
  // /healthz is not under /api and is not limited.
  assert.equal((await api(url, '/healthz')).status, 200);
});

test('--max-connections-per-ip: exactly LIMIT sockets per IP, one at a time and all at once', async (t) => {
  const LIMIT = 3;
  const { url } = await serverFor(t, ['--max-connections-per-ip', String(LIMIT)]);
  const guests = [];
  for (let i = 0; i < LIMIT + 3; i++) guests.push(await createGuest(url, uname('Ip')));
  // One at a time: LIMIT connect, number LIMIT + 1 is refused.
  const open = [];
  for (let i = 0; i < LIMIT; i++) open.push(await connect(url, guests[i].token));
  await assert.rejects(connect(url, guests[LIMIT].token), { message: 'rate_limited' });
  // A socket that goes frees its place.
  open.pop().close();
  await sleep(300);
  open.push(await connect(url, guests[LIMIT].token));
  for (const s of open) s.close();
  await sleep(300);
  // All at once: of LIMIT + 3 simultaneous connections exactly LIMIT get in.
  const results = await Promise.allSettled(guests.map((g) => connect(url, g.token)));
  const ok = results.filter((r) => r.status === 'fulfilled');
  const refused = results.filter((r) => r.status === 'rejected');
  t.after(() => ok.forEach((r) => r.value.close()));
  assert.equal(ok.length, LIMIT, `connected at once: ${ok.length}`);
  for (const r of refused) assert.equal(r.reason.message, 'rate_limited');
});

test('an unknown event → unknown_event (ack, or error event without ack)', async (t) => {
  const { url } = await serverFor(t);
  const A = await guestSocket(url);
  assertRefused(await emitAck(A.socket, 'bogus:event', { x: 1 }), 'unknown_event');
  A.socket.emit('bogus:event', { x: 1 });
  const err = await waitFor(A.socket, 'error');
  assert.equal(err.code, 'unknown_event');
  assert.equal(err.event, 'bogus:event');
  assert.ok(A.socket.connected);
  // the guest is not affected
  assertOk(await emitAck(A.socket, 'match:start', {}));
});
