import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Backoff, RECONNECT } from '../src/backoff';

test('delays grow 1 s, 2 s, 4 s then stay at 5 s, for 10 attempts, then stop', () => {
  const b = new Backoff(RECONNECT, () => 0.5); // no jitter
  const delays: (number | null)[] = [];
  for (let i = 0; i < 12; i++) delays.push(b.next());
  assert.deepEqual(delays, [1000, 2000, 4000, 5000, 5000, 5000, 5000, 5000, 5000, 5000, null, null]);
  assert.equal(b.exhausted, true);
  assert.equal(b.used, 10);
});

test('jitter stays within 1–5 s and within ±20 %', () => {
  for (const r of [0, 0.001, 0.25, 0.75, 0.999]) {
    const b = new Backoff(RECONNECT, () => r);
    for (let i = 0; i < 10; i++) {
      const base = Math.min(5000, 1000 * 2 ** i);
      const d = b.next();
      assert.ok(d !== null);
      assert.ok(d >= 1000 && d <= 5000, `delay ${d} out of 1–5 s`);
      assert.ok(Math.abs(d - base) <= base * 0.2 + 1, `delay ${d} too far from ${base}`);
    }
  }
});

test('jitter spreads delays (not all the same)', () => {
  const seen = new Set<number | null>();
  for (const r of [0.1, 0.3, 0.6, 0.9]) seen.add(new Backoff(RECONNECT, () => r).next());
  assert.ok(seen.size > 1);
});

test('reset starts over from the shortest delay', () => {
  const b = new Backoff(RECONNECT, () => 0.5);
  for (let i = 0; i < 10; i++) b.next();
  assert.equal(b.next(), null);
  b.reset();
  assert.equal(b.exhausted, false);
  assert.equal(b.next(), 1000);
});
