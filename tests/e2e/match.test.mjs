// Matching: pairing, state across sockets, interests, fairness, no re-pair, cooldown, reports,
// and the match/chat control events. Every test gets its own server so that no guest left in
// the queue by one test can be paired by another.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  serverFor,
  connect,
  waitFor,
  expectNone,
  emitAck,
  assertOk,
  assertRefused,
  guestSocket,
  startSearching,
  pair,
  sendText,
  sleep,
  uname,
  received,
} from './harness.mjs';

const HEX = /^[0-9a-f]+$/;

// Pairs A and B, then A leaves: A and B are both online and may not be paired with each other
// again (within the cooldown).
async function pairAndLeave(url) {
  const p = await pair(url);
  await sendText(p.a, 'hello');
  await waitFor(p.b, 'chat:message', 5000, (m) => m.from === 'partner');
  assertOk(await emitAck(p.a, 'chat:leave'), 'chat:leave');
  await waitFor(p.a, 'chat:ended');
  await waitFor(p.b, 'chat:ended');
  return p;
}

// Waits up to `totalMs` for `a` and `b` to be paired together. The server may only run the
// matcher when someone starts searching, so `a` restarts its search every `everyMs`.
async function pollForRematch(a, b, totalMs, everyMs = 600) {
  const deadline = Date.now() + totalMs;
  while (Date.now() < deadline) {
    try {
      const found = await waitFor(a, 'match:found', everyMs);
      await waitFor(b, 'match:found', 2000);
      return found;
    } catch {
      // not yet: restart a's search
    }
    const cancel = await emitAck(a, 'match:cancel');
    if (!cancel.ok) {
      // paired meanwhile
      assertRefused(cancel, 'not_searching', 'match:cancel (poll)');
      return waitFor(a, 'match:found', 2000);
    }
    const start = assertOk(await emitAck(a, 'match:start', {}), 'match:start (poll)');
    if (start.state === 'in_chat') return waitFor(a, 'match:found', 2000);
  }
  return null;
}

test('two guests are matched: match:searching, then match:found with roomId and partner', async (t) => {
  const { url } = await serverFor(t);
  const A = await guestSocket(url, { username: uname('Ann') });
  const B = await guestSocket(url, { username: uname('Bob') });

  const ackA = assertOk(await emitAck(A.socket, 'match:start', {}), 'match:start A');
  assert.equal(ackA.state, 'searching');
  assert.deepEqual(await waitFor(A.socket, 'match:searching'), {});

  const ackB = assertOk(await emitAck(B.socket, 'match:start', {}), 'match:start B');
  assert.ok(['searching', 'in_chat'].includes(ackB.state), `match:start B state ${ackB.state}`);

  const fa = await waitFor(A.socket, 'match:found');
  const fb = await waitFor(B.socket, 'match:found');
  assert.equal(typeof fa.roomId, 'string');
  assert.match(fa.roomId, HEX);
  assert.equal(fa.roomId, fb.roomId);
  assert.equal(fa.partner.username, B.guest.username);
  assert.equal(fb.partner.username, A.guest.username);
  // The partner is known by username only.
  assert.deepEqual(Object.keys(fa.partner), ['username']);
});

test('match:start with interests in the payload works without a partner too (searching)', async (t) => {
  const { url } = await serverFor(t);
  const A = await guestSocket(url);
  const ack = assertOk(await emitAck(A.socket, 'match:start', { interests: ['music', 'Chess'] }));
  assert.equal(ack.state, 'searching');
  await waitFor(A.socket, 'match:searching');
});

test('state is shared by all sockets of a guest: a second socket sees searching, then in_chat with the room', async (t) => {
  const { url } = await serverFor(t);
  const A = await guestSocket(url, { username: uname('Ann') });
  const B = await guestSocket(url, { username: uname('Bob') });
  await startSearching(A.socket);

  const a2 = await connect(url, A.guest.token);
  const est2 = await waitFor(a2, 'connection:established');
  assert.equal(est2.state, 'searching');

  assertOk(await emitAck(B.socket, 'match:start', {}));
  const found = await waitFor(A.socket, 'match:found');
  // The other socket of A is told too.
  const found2 = await waitFor(a2, 'match:found');
  assert.equal(found2.roomId, found.roomId);

  const a3 = await connect(url, A.guest.token);
  const est3 = await waitFor(a3, 'connection:established');
  assert.equal(est3.sessionId, A.guest.sessionId);
  assert.equal(est3.state, 'in_chat');
  assert.ok(est3.room, 'connection:established.room is missing while in_chat');
  assert.equal(est3.room.roomId, found.roomId);
  assert.equal(est3.room.partner?.username, B.guest.username);

  // Every socket of A gets B's message.
  const ack = await sendText(B.socket, 'to all of you');
  for (const s of [A.socket, a2, a3]) {
    const m = await waitFor(s, 'chat:message', 5000, (x) => x.id === ack.id);
    assert.equal(m.content, 'to all of you');
  }
});

test('interests: a waiting guest sharing an interest is preferred over a longer-waiting one', async (t) => {
  const { url } = await serverFor(t);
  // A and B may not be paired with each other (they just chatted), so both can wait at once.
  const { a, b, ga } = await pairAndLeave(url);
  await startSearching(b, ['chess']); // B waits longest
  await sleep(50);
  await startSearching(a, ['music']);
  await expectNone(a, 'match:found', 300);

  const C = await guestSocket(url, { username: uname('Cat') });
  assertOk(await emitAck(C.socket, 'match:start', { interests: ['music'] }));
  const fc = await waitFor(C.socket, 'match:found');
  assert.equal(fc.partner.username, ga.username, `C should get A (shared interest "music"), got ${fc.partner.username}`);
  const fa = await waitFor(a, 'match:found');
  assert.equal(fa.partner.username, C.guest.username);
  await expectNone(b, 'match:found', 200);
});

test('interests are compared case-insensitively after trimming', async (t) => {
  const { url } = await serverFor(t);
  const { a, b, ga } = await pairAndLeave(url);
  await startSearching(b, ['chess']);
  await sleep(50);
  await startSearching(a, ['music']);

  const C = await guestSocket(url);
  assertOk(await emitAck(C.socket, 'match:start', { interests: ['  MUSIC '] }));
  const fc = await waitFor(C.socket, 'match:found');
  assert.equal(fc.partner.username, ga.username, 'C with "  MUSIC " should get A with "music"');
});

test('fairness: without interests the longest-waiting guest is paired first', async (t) => {
  const { url } = await serverFor(t);
  const { a, b, ga, gb } = await pairAndLeave(url);
  await startSearching(a); // A waits longest
  await sleep(50);
  await startSearching(b);

  const C = await guestSocket(url);
  assertOk(await emitAck(C.socket, 'match:start', {}));
  const fc = await waitFor(C.socket, 'match:found');
  assert.equal(fc.partner.username, ga.username, 'C should get A, who waited longest');
  await waitFor(a, 'match:found');

  const D = await guestSocket(url);
  assertOk(await emitAck(D.socket, 'match:start', {}));
  const fd = await waitFor(D.socket, 'match:found');
  assert.equal(fd.partner.username, gb.username, 'D should get B');
});

test('no re-pair: two guests who just chatted are not matched again; a third guest gets the longest-waiting', async (t) => {
  const { url } = await serverFor(t);
  const { a, b, ga, gb } = await pairAndLeave(url);
  await startSearching(b);
  await sleep(50);
  const ackA = assertOk(await emitAck(a, 'match:start', {}));
  assert.equal(ackA.state, 'searching', 'A must not be paired at once with B');
  await expectNone(a, 'match:found', 1000);
  await expectNone(b, 'match:found', 0);

  // Both are still searching (seen by a fresh socket of each).
  const a2 = await connect(url, ga.token);
  assert.equal((await waitFor(a2, 'connection:established')).state, 'searching');

  const C = await guestSocket(url);
  assertOk(await emitAck(C.socket, 'match:start', {}));
  const fc = await waitFor(C.socket, 'match:found');
  assert.equal(fc.partner.username, gb.username, 'C should get B, who waited longest');
  await expectNone(a, 'match:found', 300);
});

test('with --repair-cooldown-secs 2 the same two guests can be matched again after the cooldown', async (t) => {
  const { url } = await serverFor(t, ['--repair-cooldown-secs', '2']);
  const { a, b, gb } = await pairAndLeave(url);
  const leftAt = Date.now();
  await startSearching(b);
  const ackA = assertOk(await emitAck(a, 'match:start', {}));
  assert.equal(ackA.state, 'searching', 'A must not be paired at once with B during the cooldown');
  const found = await pollForRematch(a, b, 10_000);
  assert.ok(found, 'A and B were not re-matched within 10 s of a 2 s cooldown');
  assert.equal(found.partner.username, gb.username);
  assert.ok(Date.now() - leftAt >= 1500, `re-matched after ${Date.now() - leftAt} ms, inside the 2 s cooldown`);
});

test('after a report the two guests are never matched again, even after the cooldown', async (t) => {
  const { url } = await serverFor(t, ['--repair-cooldown-secs', '1']);
  const { a, b, gb } = await pair(url);
  assertOk(await emitAck(a, 'chat:report', { reason: 'rude' }), 'chat:report');
  await waitFor(b, 'chat:ended');
  await sleep(1500); // past the cooldown
  await startSearching(b);
  const ackA = assertOk(await emitAck(a, 'match:start', {}));
  assert.equal(ackA.state, 'searching', 'reported guests were paired at once');
  const found = await pollForRematch(a, b, 2500);
  assert.equal(found, null, `reported guests were matched again: ${JSON.stringify(found)}`);
  await expectNone(b, 'match:found', 0);

  // They are still matchable with others: a third guest gets B (the longest waiting).
  const C = await guestSocket(url);
  assertOk(await emitAck(C.socket, 'match:start', {}));
  const fc = await waitFor(C.socket, 'match:found');
  assert.equal(fc.partner.username, gb.username, 'C should get B, who waited longest');
});

test('match:start while searching → already_searching; while in chat → already_in_chat', async (t) => {
  const { url } = await serverFor(t);
  const A = await guestSocket(url);
  await startSearching(A.socket);
  assertRefused(await emitAck(A.socket, 'match:start', {}), 'already_searching');

  const B = await guestSocket(url);
  assertOk(await emitAck(B.socket, 'match:start', {}));
  await waitFor(A.socket, 'match:found');
  await waitFor(B.socket, 'match:found');
  assertRefused(await emitAck(A.socket, 'match:start', {}), 'already_in_chat');
  assertRefused(await emitAck(B.socket, 'match:start', { interests: ['x'] }), 'already_in_chat');
  // Nothing changed: the chat still works.
  const ack = await sendText(A.socket, 'still here');
  await waitFor(B.socket, 'chat:message', 5000, (m) => m.id === ack.id);
});

test('match:cancel: ok while searching (state online), not_searching otherwise', async (t) => {
  const { url } = await serverFor(t);
  const A = await guestSocket(url);
  assertRefused(await emitAck(A.socket, 'match:cancel'), 'not_searching');
  await startSearching(A.socket);
  const ack = assertOk(await emitAck(A.socket, 'match:cancel'));
  assert.equal(ack.state, 'online');
  assertRefused(await emitAck(A.socket, 'match:cancel'), 'not_searching');
  // A cancelled guest is not matched.
  const B = await guestSocket(url);
  const ackB = assertOk(await emitAck(B.socket, 'match:start', {}));
  assert.equal(ackB.state, 'searching');
  await expectNone(B.socket, 'match:found', 500);
  await expectNone(A.socket, 'match:found', 0);
});

test('invalid interests → invalid_interests and nothing changes', async (t) => {
  const { url } = await serverFor(t);
  const A = await guestSocket(url);
  const cases = [
    ['six tags', ['a', 'b', 'c', 'd', 'e', 'f']],
    ['a 25-character tag', ['x'.repeat(25)]],
    ['an empty tag', ['']],
    ['a blank tag', ['   ']],
  ];
  for (const [label, interests] of cases) {
    assertRefused(await emitAck(A.socket, 'match:start', { interests }), 'invalid_interests', label);
  }
  assertRefused(await emitAck(A.socket, 'match:start', { interests: 'music' }), ['invalid_interests', 'invalid_payload'], 'a string');
  assertRefused(await emitAck(A.socket, 'match:start', { interests: [1, 2] }), ['invalid_interests', 'invalid_payload'], 'numbers');
  // Nothing changed: A is not searching.
  assertRefused(await emitAck(A.socket, 'match:cancel'), 'not_searching');
  // Five tags of 24 characters are fine.
  const ok = assertOk(await emitAck(A.socket, 'match:start', { interests: ['a', 'b', 'c', 'd', 'y'.repeat(24)] }));
  assert.equal(ok.state, 'searching');
});

test('match:next: partner gets chat:ended skipped, the skipper searches again', async (t) => {
  const { url } = await serverFor(t);
  const { a, b, roomId } = await pair(url);
  const ack = assertOk(await emitAck(a, 'match:next', {}), 'match:next');
  assert.equal(ack.state, 'searching', 'no one else is searching, so the skipper waits');
  const endedB = await waitFor(b, 'chat:ended');
  assert.deepEqual(endedB, { roomId, reason: 'skipped' });
  const endedA = await waitFor(a, 'chat:ended');
  assert.deepEqual(endedA, { roomId, reason: 'skipped' });
  // match:searching after the pair's own match:searching from pair()
  await waitFor(a, 'match:searching', 5000);
  // The skipped guest is online (not searching).
  assertRefused(await emitAck(b, 'match:cancel'), 'not_searching');
  // And the skipper's new search does not bring B back.
  assertOk(await emitAck(b, 'match:start', {}));
  await expectNone(a, 'match:found', 800);
  await expectNone(b, 'match:found', 0);
});

test('match:next when not in chat → not_in_chat', async (t) => {
  const { url } = await serverFor(t);
  const A = await guestSocket(url);
  assertRefused(await emitAck(A.socket, 'match:next', {}), 'not_in_chat');
  await startSearching(A.socket);
  assertRefused(await emitAck(A.socket, 'match:next', {}), 'not_in_chat');
});

test('chat:leave: both get chat:ended left and a system message; the leaver is online', async (t) => {
  const { url } = await serverFor(t);
  const { a, b, roomId } = await pair(url);
  const ack = assertOk(await emitAck(a, 'chat:leave'), 'chat:leave');
  assert.equal(ack.state, 'online');
  assert.deepEqual(await waitFor(b, 'chat:ended'), { roomId, reason: 'left' });
  assert.deepEqual(await waitFor(a, 'chat:ended'), { roomId, reason: 'left' });
  for (const s of [a, b]) {
    const sys = await waitFor(s, 'chat:message', 5000, (m) => m.from === 'system');
    assert.equal(sys.type, 'system');
    assert.equal(typeof sys.content, 'string');
    assert.ok(sys.content.length > 0, 'system message content is empty');
    assert.equal(typeof sys.id, 'string');
    assert.equal(typeof sys.timestamp, 'number');
  }
  // The two system messages tell different things ("Stranger has left" / "You left").
  const [sa] = received(a, 'chat:message', (m) => m.from === 'system');
  const [sb] = received(b, 'chat:message', (m) => m.from === 'system');
  assert.notEqual(sa.content, sb.content);
  assertRefused(await emitAck(b, 'chat:leave'), 'not_in_chat');
  assertRefused(await emitAck(a, 'chat:leave'), 'not_in_chat');
});

test('chat:report: partner gets chat:ended reported; reporter is online', async (t) => {
  const { url } = await serverFor(t);
  const { a, b, roomId } = await pair(url);
  const ack = assertOk(await emitAck(a, 'chat:report', { reason: 'spam' }), 'chat:report');
  assert.equal(ack.state, 'online');
  assert.deepEqual(await waitFor(b, 'chat:ended'), { roomId, reason: 'reported' });
  assert.deepEqual(await waitFor(a, 'chat:ended'), { roomId, reason: 'reported' });
  await waitFor(b, 'chat:message', 5000, (m) => m.from === 'system' && m.type === 'system');
  assertRefused(await emitAck(a, 'chat:report', {}), 'not_in_chat');
});

test('chat:report without a reason is accepted; a reason over 200 characters → invalid_report', async (t) => {
  const { url } = await serverFor(t);
  const { a, b, roomId } = await pair(url);
  assertRefused(await emitAck(a, 'chat:report', { reason: 'r'.repeat(201) }), 'invalid_report');
  // Nothing changed: still chatting.
  const m = await sendText(a, 'still chatting');
  await waitFor(b, 'chat:message', 5000, (x) => x.id === m.id);
  assertOk(await emitAck(b, 'chat:report', {}));
  assert.deepEqual(await waitFor(a, 'chat:ended'), { roomId, reason: 'reported' });
});
