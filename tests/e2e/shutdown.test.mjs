// Graceful shutdown: on SIGTERM tandem tells connected clients, closes their sockets, stops
// accepting work and exits 0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { serverFor, guestSocket, waitFor, waitDisconnect } from './harness.mjs';

test('SIGTERM: clients get server:shutdown and are disconnected; the process exits 0', async (t) => {
  const server = await serverFor(t, ['--shutdown-grace-secs', '5']);
  const a = await guestSocket(server.url);
  const b = await guestSocket(server.url);
  const notices = Promise.all([
    waitFor(a.socket, 'server:shutdown', 5000),
    waitFor(b.socket, 'server:shutdown', 5000),
  ]);
  const exited = new Promise((resolve) => server.proc.once('exit', (code, signal) => resolve({ code, signal })));
  server.proc.kill('SIGTERM');
  await notices;
  await waitDisconnect(a.socket, 5000);
  await waitDisconnect(b.socket, 5000);
  const { code, signal } = await exited;
  assert.equal(signal, null, 'exited by itself, not killed');
  assert.equal(code, 0, `exit code 0; output:\n${server.output()}`);
});

test('/readyz: ready while serving (every media and TURN worker beating); 503 with the reason while draining; SIGTERM joins the workers', async (t) => {
  const { api } = await import('./harness.mjs');
  const server = await serverFor(t, [
    '--shutdown-grace-secs', '5', '--rtc-udp-workers', '2', '--turn-udp-workers', '2', '--log-level', 'info',
  ]);
  const ready = await api(server.url, '/readyz');
  assert.equal(ready.status, 200, ready.text);
  assert.deepEqual(ready.body, { status: 'ready' });
  // Every core's tables are exported for leak watching (scripts/soak.sh).
  let text = '';
  for (let i = 0; i < 40; i++) {
    text = (await api(server.url, '/metrics')).text;
    if (['signaling', 'media', 'turn'].every((c) => text.includes(`tandem_core_entries{core="${c}"`))) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  for (const [core, table] of [['signaling', 'sessions'], ['media', 'timers'], ['turn', 'allocations']]) {
    assert.match(text, new RegExp(`tandem_core_entries\\{core="${core}",table="${table}"\\} \\d+`), `${core}/${table}`);
  }
  const exited = new Promise((resolve) => server.proc.once('exit', (code, signal) => resolve({ code, signal })));
  server.proc.kill('SIGTERM');
  // During the drain notice /readyz says why it is not ready (a load balancer stops sending).
  let draining = null;
  for (let i = 0; i < 40 && !draining; i++) {
    const r = await api(server.url, '/readyz').catch(() => null);
    if (r && r.status === 503) draining = r;
    else await new Promise((res) => setTimeout(res, 25));
  }
  assert.ok(draining, 'no 503 while draining');
  assert.equal(draining.body.status, 'not_ready');
  assert.ok(draining.body.reasons.includes('shutting down'), JSON.stringify(draining.body));
  const { code, signal } = await exited;
  assert.equal(signal, null);
  assert.equal(code, 0, server.output());
  // The workers were stopped and joined before the last word.
  assert.doesNotMatch(server.output(), /worker thread ended|background task ended/);
  assert.match(server.output(), /bye/);
});
