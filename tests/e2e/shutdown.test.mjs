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
