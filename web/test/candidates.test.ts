import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CandidateQueue, parseCandidate, type IceCandidate } from '../src/candidates';

const c = (n: number): IceCandidate => ({ candidate: `candidate:${n} 1 udp 1 127.0.0.1 ${n} typ host`, sdpMid: '0', sdpMLineIndex: 0 });

test('candidates wait for the remote description, then apply in arrival order', async () => {
  const applied: IceCandidate[] = [];
  const q = new CandidateQueue((x) => void applied.push(x));
  await q.push(c(1));
  await q.push(c(2));
  assert.equal(applied.length, 0);
  assert.equal(q.length, 2);
  await q.open();
  assert.deepEqual(applied, [c(1), c(2)]);
  await q.push(c(3));
  assert.deepEqual(applied, [c(1), c(2), c(3)]);
  assert.equal(q.length, 0);
});

test('an async apply keeps the order', async () => {
  const applied: number[] = [];
  const q = new CandidateQueue(async (x) => {
    await new Promise((r) => setTimeout(r, 5 - Number(x.sdpMid)));
    applied.push(Number(x.sdpMid));
  });
  for (let i = 0; i < 5; i++) await q.push({ candidate: '', sdpMid: String(i), sdpMLineIndex: null });
  await q.open();
  assert.deepEqual(applied, [0, 1, 2, 3, 4]);
});

test('reset (a new peer connection) queues again and forgets the old candidates', async () => {
  const applied: IceCandidate[] = [];
  const q = new CandidateQueue((x) => void applied.push(x));
  await q.open();
  q.reset();
  await q.push(c(1));
  assert.equal(applied.length, 0);
  q.reset();
  await q.open();
  assert.equal(applied.length, 0);
});

test('the queue is bounded; the overflow is counted', async () => {
  const q = new CandidateQueue(() => undefined, 3);
  for (let i = 0; i < 5; i++) await q.push(c(i));
  assert.equal(q.length, 3);
  assert.equal(q.dropped, 2);
});

test('parseCandidate reads the server event and refuses garbage', () => {
  assert.deepEqual(parseCandidate({ candidate: 'candidate:1', sdpMid: null, sdpMLineIndex: null }), {
    candidate: 'candidate:1',
    sdpMid: null,
    sdpMLineIndex: null,
  });
  assert.deepEqual(parseCandidate({ candidate: 'candidate:1', sdpMid: '0', sdpMLineIndex: 0 }), {
    candidate: 'candidate:1',
    sdpMid: '0',
    sdpMLineIndex: 0,
  });
  assert.equal(parseCandidate(null), null);
  assert.equal(parseCandidate('candidate:1'), null);
  assert.equal(parseCandidate({ candidate: 5 }), null);
  assert.equal(parseCandidate({ candidate: 'x', sdpMLineIndex: 1.5 })?.sdpMLineIndex, null);
});
