// Chat: messages, acks, sent/delivered/read receipts, validation, typing indicators.
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
  guestSocket,
  pair,
  sendText,
} from './harness.mjs';

const HEX = /^[0-9a-f]+$/;

test('a message reaches the partner; the sender gets the ack, chat:message:sent and, after the partner acks, delivered', async (t) => {
  const { url } = await serverFor(t);
  const { a, b, roomId } = await pair(url);
  const before = Date.now();
  const ack = await emitAck(a, 'chat:message', { clientId: 'client-1', type: 'text', content: '  hello there  ' });
  assertOk(ack);
  assert.equal(typeof ack.id, 'string');
  assert.match(ack.id, HEX);
  assert.equal(typeof ack.timestamp, 'number');
  assert.ok(Math.abs(ack.timestamp - before) < 60_000, `timestamp ${ack.timestamp} is not ms since the epoch`);

  const sent = await waitFor(a, 'chat:message:sent');
  assert.deepEqual(sent, { clientId: 'client-1', id: ack.id, timestamp: ack.timestamp });

  const msg = await waitFor(b, 'chat:message', 5000, (m) => m.from === 'partner');
  assert.deepEqual(msg, {
    id: ack.id,
    roomId,
    type: 'text',
    content: 'hello there', // trimmed
    timestamp: ack.timestamp,
    from: 'partner',
  });

  // b's default handler acknowledged it.
  assert.deepEqual(await waitFor(a, 'chat:message:delivered'), { id: ack.id });
  // The sender does not get its own message back as chat:message, nor a delivered for b.
  await expectNone(a, 'chat:message', 200, (m) => m.id === ack.id);
  await expectNone(b, 'chat:message:delivered', 0);
  await expectNone(b, 'chat:message:sent', 0);
});

test('messages keep their order and get distinct ids', async (t) => {
  const { url } = await serverFor(t);
  const { a, b } = await pair(url);
  const acks = [];
  for (let i = 0; i < 5; i++) acks.push(await sendText(a, `m${i}`));
  assert.equal(new Set(acks.map((x) => x.id)).size, 5, 'ids must be distinct');
  const got = [];
  for (let i = 0; i < 5; i++) got.push(await waitFor(b, 'chat:message', 5000, (m) => m.from === 'partner'));
  assert.deepEqual(got.map((m) => m.content), ['m0', 'm1', 'm2', 'm3', 'm4']);
  assert.deepEqual(got.map((m) => m.id), acks.map((x) => x.id));
  // And the other way round.
  const back = await sendText(b, 'reply');
  const m = await waitFor(a, 'chat:message', 5000, (x) => x.from === 'partner');
  assert.equal(m.id, back.id);
  assert.equal(m.content, 'reply');
});

test('chat:message:sent goes to every socket of the sender; the message to every socket of the partner', async (t) => {
  const { url } = await serverFor(t);
  const { a, b, ga, gb } = await pair(url);
  const a2 = await connect(url, ga.token);
  const b2 = await connect(url, gb.token);
  await waitFor(a2, 'connection:established');
  await waitFor(b2, 'connection:established');
  const ack = await sendText(a, 'multi');
  const sent2 = await waitFor(a2, 'chat:message:sent', 5000, (x) => x.id === ack.id);
  assert.equal(sent2.clientId !== undefined, true);
  await waitFor(b, 'chat:message', 5000, (m) => m.id === ack.id);
  await waitFor(b2, 'chat:message', 5000, (m) => m.id === ack.id);
  await expectNone(a2, 'chat:message', 200, (m) => m.id === ack.id);
});

test('no delivered receipt while the partner has not acknowledged the message', async (t) => {
  const { url } = await serverFor(t);
  const { a, b } = await pair(url, { b: { autoAck: false } });
  const ack = await sendText(a, 'unacked');
  const entry = await waitForEntry(b, 'chat:message', 5000, (m) => m.id === ack.id);
  await expectNone(a, 'chat:message:delivered', 800);
  // Acknowledging now produces it.
  const cb = entry.args[entry.args.length - 1];
  assert.equal(typeof cb, 'function', 'chat:message must be sent with an ack callback');
  cb();
  assert.deepEqual(await waitFor(a, 'chat:message:delivered'), { id: ack.id });
});

test('chat:message:read: the sender gets chat:message:read { id }', async (t) => {
  const { url } = await serverFor(t);
  const { a, b } = await pair(url);
  const m1 = await sendText(a, 'one');
  const m2 = await sendText(a, 'two');
  await waitFor(b, 'chat:message', 5000, (m) => m.id === m2.id);
  assertOk(await emitAck(b, 'chat:message:read', { id: m2.id }), 'chat:message:read');
  assert.deepEqual(await waitFor(a, 'chat:message:read'), { id: m2.id });
  await expectNone(b, 'chat:message:read', 200);
  // Reading the earlier message is accepted too.
  assertOk(await emitAck(b, 'chat:message:read', { id: m1.id }));
  assert.deepEqual(await waitFor(a, 'chat:message:read'), { id: m1.id });
});

test('chat:message:read refusals: unknown_message, own message, invalid_payload, not_in_chat', async (t) => {
  const { url } = await serverFor(t);
  const { a, b } = await pair(url);
  const mine = await sendText(b, 'from b');
  await waitFor(a, 'chat:message', 5000, (m) => m.id === mine.id);
  assertRefused(await emitAck(b, 'chat:message:read', { id: 'deadbeefdeadbeef' }), 'unknown_message', 'unknown id');
  // b did not receive its own message from the partner: not readable by b.
  assertRefused(await emitAck(b, 'chat:message:read', { id: mine.id }), 'unknown_message', 'own message');
  assertRefused(await emitAck(b, 'chat:message:read', {}), 'invalid_payload', 'missing id');
  assertRefused(await emitAck(b, 'chat:message:read', { id: 42 }), 'invalid_payload', 'numeric id');
  assertRefused(await emitAck(b, 'chat:message:read', 'nope'), 'invalid_payload', 'string payload');
  await expectNone(b, 'chat:message:read', 100);
  const C = await guestSocket(url);
  assertRefused(await emitAck(C.socket, 'chat:message:read', { id: mine.id }), 'not_in_chat', 'not in chat');
});

test('a message id from an earlier chat cannot be read in the next one', async (t) => {
  const { url } = await serverFor(t);
  const { a, b } = await pair(url);
  const old = await sendText(a, 'old chat');
  await waitFor(b, 'chat:message', 5000, (m) => m.id === old.id);
  assertOk(await emitAck(b, 'chat:leave'));
  await waitFor(b, 'chat:ended');
  const C = await guestSocket(url);
  assertOk(await emitAck(b, 'match:start', {}));
  assertOk(await emitAck(C.socket, 'match:start', {}));
  await waitFor(b, 'match:found');
  assertRefused(await emitAck(b, 'chat:message:read', { id: old.id }), 'unknown_message');
});

const INVALID = [
  ['empty content', { clientId: 'c', type: 'text', content: '' }, 'invalid_message'],
  ['whitespace-only content', { clientId: 'c', type: 'text', content: '  \n\t  ' }, 'invalid_message'],
  ['2001 characters', { clientId: 'c', type: 'text', content: 'x'.repeat(2001) }, 'invalid_message'],
  ['a BEL control character', { clientId: 'c', type: 'text', content: 'ding\u0007dong' }, 'invalid_message'],
  ['a NUL control character', { clientId: 'c', type: 'text', content: 'a\u0000b' }, 'invalid_message'],
  ['an escape character', { clientId: 'c', type: 'text', content: 'a\u001b[31mb' }, 'invalid_message'],
  ['missing clientId', { type: 'text', content: 'hi' }, ['invalid_message', 'invalid_payload']],
  ['empty clientId', { clientId: '', type: 'text', content: 'hi' }, 'invalid_message'],
  ['65-character clientId', { clientId: 'k'.repeat(65), type: 'text', content: 'hi' }, 'invalid_message'],
  ['type "file"', { clientId: 'c', type: 'file', content: 'hi' }, 'invalid_message'],
  ['missing content', { clientId: 'c', type: 'text' }, ['invalid_message', 'invalid_payload']],
  ['numeric content', { clientId: 'c', type: 'text', content: 5 }, ['invalid_message', 'invalid_payload']],
  ['a string payload', 'hello', 'invalid_payload'],
  ['an array payload', ['hello'], 'invalid_payload'],
];

test('invalid messages are refused through the ack; nothing reaches the partner', async (t) => {
  const { url } = await serverFor(t);
  const { a, b } = await pair(url);
  for (const [label, payload, code] of INVALID) {
    assertRefused(await emitAck(a, 'chat:message', payload), code, label);
  }
  // A refused event with an ack gets no `error` event.
  await expectNone(a, 'error', 200);
  await expectNone(b, 'chat:message', 0, (m) => m.from === 'partner');
  await expectNone(a, 'chat:message:sent', 0);
});

test('boundaries: 2000 characters after trimming, newline and tab are accepted', async (t) => {
  const { url } = await serverFor(t);
  const { a, b } = await pair(url);
  const long = 'y'.repeat(2000);
  const m1 = await sendText(a, `   ${long}   `);
  assert.equal((await waitFor(b, 'chat:message', 5000, (m) => m.id === m1.id)).content, long);
  const m2 = await sendText(a, 'line one\nline\ttwo');
  assert.equal((await waitFor(b, 'chat:message', 5000, (m) => m.id === m2.id)).content, 'line one\nline\ttwo');
  const m3 = await sendText(a, 'ünïcödé ✓ 🙂');
  assert.equal((await waitFor(b, 'chat:message', 5000, (m) => m.id === m3.id)).content, 'ünïcödé ✓ 🙂');
  // type may be omitted.
  const m4 = assertOk(await emitAck(a, 'chat:message', { clientId: 'no-type', content: 'typeless' }));
  assert.equal((await waitFor(b, 'chat:message', 5000, (m) => m.id === m4.id)).type, 'text');
});

test('a refused event without an ack gets an `error` event { code, message, event }', async (t) => {
  const { url } = await serverFor(t);
  const { a } = await pair(url);
  a.emit('chat:message', { clientId: 'c', type: 'text', content: '' });
  const err = await waitFor(a, 'error');
  assert.equal(err.code, 'invalid_message');
  assert.equal(err.event, 'chat:message');
  assert.equal(typeof err.message, 'string');
  assert.ok(err.message.length > 0);

  a.emit('chat:message', 'not an object');
  const err2 = await waitFor(a, 'error');
  assert.equal(err2.code, 'invalid_payload');
  assert.equal(err2.event, 'chat:message');

  const C = await guestSocket(url);
  C.socket.emit('chat:leave');
  const err3 = await waitFor(C.socket, 'error');
  assert.deepEqual({ code: err3.code, event: err3.event }, { code: 'not_in_chat', event: 'chat:leave' });
});

test('chat:message when not in a chat → not_in_chat', async (t) => {
  const { url } = await serverFor(t);
  const A = await guestSocket(url);
  assertRefused(await emitAck(A.socket, 'chat:message', { clientId: 'c', type: 'text', content: 'hi' }), 'not_in_chat');
  assertOk(await emitAck(A.socket, 'match:start', {}));
  assertRefused(await emitAck(A.socket, 'chat:message', { clientId: 'c', type: 'text', content: 'hi' }), 'not_in_chat', 'while searching');
});

test('typing:start reaches the partner; typing:stop follows on its own after about 5 s', async (t) => {
  const { url } = await serverFor(t);
  const { a, b, roomId } = await pair(url);
  assertOk(await emitAck(a, 'typing:start'), 'typing:start');
  const startedAt = Date.now();
  assert.deepEqual(await waitFor(b, 'typing:start'), { roomId });
  await expectNone(a, 'typing:start', 0);
  const stop = await waitForEntry(b, 'typing:stop', 8000);
  assert.deepEqual(stop.payload, { roomId });
  const after = stop.at - startedAt;
  assert.ok(after >= 3000, `automatic typing:stop came after ${after} ms; expected about 5 s`);
});

test('--typing-timeout-secs 1: the automatic typing:stop follows after about 1 s', async (t) => {
  const { url } = await serverFor(t, ['--typing-timeout-secs', '1']);
  const { a, b, roomId } = await pair(url);
  assertOk(await emitAck(a, 'typing:start'));
  const startedAt = Date.now();
  await waitFor(b, 'typing:start');
  const stop = await waitForEntry(b, 'typing:stop', 3500);
  assert.deepEqual(stop.payload, { roomId });
  assert.ok(stop.at - startedAt >= 500, `typing:stop after ${stop.at - startedAt} ms`);
  // Another typing:start restarts the indicator.
  assertOk(await emitAck(a, 'typing:start'));
  await waitFor(b, 'typing:start');
  await waitFor(b, 'typing:stop', 3500);
});

test('typing:stop from the client reaches the partner', async (t) => {
  const { url } = await serverFor(t);
  const { a, b, roomId } = await pair(url);
  assertOk(await emitAck(a, 'typing:start'));
  await waitFor(b, 'typing:start');
  assertOk(await emitAck(a, 'typing:stop'), 'typing:stop');
  assert.deepEqual(await waitFor(b, 'typing:stop', 1500), { roomId });
});

test('sending a message stops typing at once', async (t) => {
  const { url } = await serverFor(t);
  const { a, b, roomId } = await pair(url);
  assertOk(await emitAck(a, 'typing:start'));
  await waitFor(b, 'typing:start');
  const sentAt = Date.now();
  const ack = await sendText(a, 'done typing');
  const stop = await waitForEntry(b, 'typing:stop', 2000);
  assert.deepEqual(stop.payload, { roomId });
  assert.ok(stop.at - sentAt < 1500, `typing:stop came ${stop.at - sentAt} ms after the message`);
  const msg = await waitForEntry(b, 'chat:message', 2000, (m) => m.id === ack.id);
  // typing:stop comes before the message or together with it, not seconds later.
  assert.ok(stop.at - msg.at < 500, `typing:stop came ${stop.at - msg.at} ms after the message`);
});

test('typing events when not in a chat → not_in_chat', async (t) => {
  const { url } = await serverFor(t);
  const A = await guestSocket(url);
  assertRefused(await emitAck(A.socket, 'typing:start'), 'not_in_chat');
  assertRefused(await emitAck(A.socket, 'typing:stop'), 'not_in_chat');
});

test('leaving the chat while typing stops typing for the partner', async (t) => {
  const { url } = await serverFor(t);
  const { a, b, roomId } = await pair(url);
  assertOk(await emitAck(a, 'typing:start'));
  await waitFor(b, 'typing:start');
  const leftAt = Date.now();
  assertOk(await emitAck(a, 'chat:leave'));
  await waitFor(b, 'chat:ended');
  const stop = await waitForEntry(b, 'typing:stop', 2000);
  assert.deepEqual(stop.payload, { roomId });
  assert.ok(stop.at - leftAt < 1500, `typing:stop came ${stop.at - leftAt} ms after the leave`);
});
