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

test('/readyz: 503 naming a media or TURN worker that stops beating (that thread alone stopped with ptrace), ready again once it runs on', { timeout: 60_000 }, async (t) => {
  const { api } = await import('./harness.mjs');
  const { spawn } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const stopThread = fileURLToPath(new URL('./stop-thread.py', import.meta.url));
  const server = await serverFor(t, ['--rtc-udp-workers', '2', '--turn-udp-workers', '2']);
  const readyz = () => api(server.url, '/readyz');
  /** Polls /readyz until `ok(response)`, for at most `ms`. */
  const until = async (what, ok, ms) => {
    let last;
    for (const end = Date.now() + ms; Date.now() < end;) {
      last = await readyz();
      if (ok(last)) return last;
      await new Promise((res) => setTimeout(res, 100));
    }
    assert.fail(`${what}: not within ${ms} ms; last /readyz ${last?.status} ${last?.text}`);
  };
  assert.equal((await readyz()).status, 200);
  for (const worker of ['turn-1', 'media-0']) {
    const helper = spawn('python3', [stopThread, String(server.proc.pid), worker], { stdio: ['pipe', 'pipe', 'pipe'] });
    t.after(() => { if (helper.exitCode === null) process.kill(helper.pid, 'SIGKILL'); });
    let out = '';
    helper.stderr.on('data', (c) => (out += c));
    await new Promise((resolve, reject) => {
      helper.stdout.on('data', (c) => {
        out += c;
        if (out.includes('stopped')) resolve();
      });
      helper.once('exit', (code) => reject(new Error(`stop-thread.py ${worker} exited ${code}: ${out}`)));
    });
    const stopped = Date.now();
    const r = await until(`/readyz 503 once ${worker} is stopped`, (x) => x.status === 503, 8000);
    t.diagnostic(`${worker} stopped: /readyz 503 after ${Date.now() - stopped} ms: ${r.text}`);
    assert.deepEqual(r.body, { status: 'not_ready', reasons: [`worker ${worker} is not beating`] });
    // The other workers, the hub and HTTP kept serving meanwhile.
    assert.equal((await api(server.url, '/healthz')).status, 200);
    const exited = new Promise((resolve) => helper.once('exit', resolve));
    process.kill(helper.pid, 'SIGTERM');
    await exited;
    assert.match(out, /released/, out);
    await until(`/readyz 200 once ${worker} runs on`, (x) => x.status === 200, 5000);
  }
});
