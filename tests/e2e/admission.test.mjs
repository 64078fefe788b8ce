// Cheap exhaustion of signaling state: guests that never connect a socket are removed after
// --guest-connect-timeout-secs (60 by default), open sessions are capped per client address
// (--max-sessions-per-ip, an IPv4 address or an IPv6 /64), and Socket.IO connection attempts
// (engine.io handshakes) are rate limited per client address (--socket-handshakes-per-min).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  serverFor,
  api,
  assertHttpError,
  assertRefusedConnect,
  connect,
  createGuest,
  waitFor,
  sleep,
  uname,
} from './harness.mjs';

const metric = (text, re) => Number(re.exec(text)?.[1] ?? 0);

test('a guest that connects no socket within --guest-connect-timeout-secs is removed; its token is refused', async (t) => {
  const { url } = await serverFor(t, ['--guest-connect-timeout-secs', '1']);
  const idle = await createGuest(url, uname('Idle'));
  const active = await createGuest(url, uname('Active'));
  const socket = await connect(url, active.token);
  await waitFor(socket, 'connection:established');
  // Still there within the deadline.
  assert.equal((await api(url, '/api/guest/refresh', { method: 'POST', token: idle.token })).status, 200);
  assert.equal((await api(url, '/api/stats')).body.totalUsers, 2);

  await sleep(1600);
  assertHttpError(await api(url, '/api/guest/refresh', { method: 'POST', token: idle.token }), 401, 'unauthorized');
  await assertRefusedConnect(url, idle.token, 'unauthorized');
  // The guest that connected stays, also once its socket is gone.
  socket.close();
  await sleep(1200);
  assert.equal((await api(url, '/api/guest/refresh', { method: 'POST', token: active.token })).status, 200);
  const again = await connect(url, active.token);
  assert.equal((await waitFor(again, 'connection:established')).sessionId, active.sessionId);
  assert.equal((await api(url, '/api/stats')).body.totalUsers, 1);
  const text = (await api(url, '/metrics')).text;
  assert.equal(metric(text, /^tandem_sessions_reaped_total (\d+)$/m), 1);
});

test('--max-sessions-per-ip: exactly LIMIT open sessions per client address, also at once; reaped ones free their place', async (t) => {
  const LIMIT = 3;
  const { url } = await serverFor(t, [
    '--max-sessions-per-ip', String(LIMIT),
    '--guest-connect-timeout-secs', '2',
    '--trusted-proxy', '127.0.0.0/8',
  ]);
  const from = (xff) => api(url, '/api/guest', { method: 'POST', body: {}, headers: { 'x-forwarded-for': xff } });

  // One at a time: LIMIT are created, LIMIT + 1 is refused.
  const mine = [];
  for (let i = 0; i < LIMIT; i++) {
    const res = await from('192.0.2.1');
    assert.equal(res.status, 201, res.text);
    mine.push(res.body);
  }
  const refused = await from('192.0.2.1');
  assertHttpError(refused, 429, 'too_many_sessions');
  // Another address behind the same proxy has its own place.
  assert.equal((await from('192.0.2.2')).status, 201);

  // All at once from a fresh address: exactly LIMIT of LIMIT + 3.
  const burst = await Promise.all(Array.from({ length: LIMIT + 3 }, () => from('198.51.100.7')));
  assert.equal(burst.filter((r) => r.status === 201).length, LIMIT);
  for (const r of burst.filter((x) => x.status !== 201)) assertHttpError(r, 429, 'too_many_sessions');

  // IPv6: one /64 is one client.
  for (let i = 1; i <= LIMIT; i++) assert.equal((await from(`2001:db8:1:2::${i}`)).status, 201);
  assertHttpError(await from('2001:db8:1:2:ffff::1'), 429, 'too_many_sessions');
  assert.equal((await from('2001:db8:1:3::1')).status, 201);

  // Sessions that end free their place: the first guest connects (and stays), the two others
  // never do and are removed after 2 s.
  const s = await connect(url, mine[0].token, { extraHeaders: { 'x-forwarded-for': '192.0.2.1' } });
  await waitFor(s, 'connection:established');
  await sleep(2500);
  assert.equal((await from('192.0.2.1')).status, 201);
  assert.equal((await from('192.0.2.1')).status, 201);
  assertHttpError(await from('192.0.2.1'), 429, 'too_many_sessions');
  const text = (await api(url, '/metrics')).text;
  assert.ok(metric(text, /^tandem_http_rate_limited_total\{limit="sessions_per_ip"\} (\d+)$/m) >= 6);
});

test('the defaults: 20 open sessions per client address, 60 handshakes a minute, 60 s to connect', async (t) => {
  // The harness raises every limit for the other tests; this one puts the default back.
  const { url } = await serverFor(t, ['--max-sessions-per-ip', '20']);
  for (let i = 0; i < 20; i++) await createGuest(url);
  assertHttpError(await api(url, '/api/guest', { method: 'POST', body: {} }), 429, 'too_many_sessions');
  // `--help` names the defaults (config/src/tests.rs checks the values themselves).
  const { spawnSync } = await import('node:child_process');
  const help = spawnSync(process.env.TANDEM_BIN, ['--help'], { encoding: 'utf8' }).stdout;
  assert.match(help, /--max-sessions-per-ip <N>[\s\S]*?\[default: 20\]/);
  assert.match(help, /--socket-handshakes-per-min <N>[\s\S]*?\[default: 60\]/);
  assert.match(help, /--guest-connect-timeout-secs <SECS>[\s\S]*?\[default: 60\]/);
});

test('--socket-handshakes-per-min: LIMIT handshakes per address, then connect_error rate_limited, then HTTP 429', async (t) => {
  const LIMIT = 3;
  const { url } = await serverFor(t, ['--socket-handshakes-per-min', String(LIMIT), '--trusted-proxy', '127.0.0.0/8']);
  const guest = await createGuest(url, uname('Hs'));
  // A polling client makes many requests for one connection (the handshake, polls, the
  // Socket.IO connect, the upgrade): only the handshake counts.
  for (const transports of [['polling'], ['polling', 'websocket'], ['websocket']]) {
    const s = await connect(url, guest.token, { transports });
    await waitFor(s, 'connection:established');
    await sleep(300);
    s.close();
  }
  // Over the limit: refused in Socket.IO's words (the client learns why), as many times again.
  for (let i = 0; i < LIMIT; i++) await assertRefusedConnect(url, guest.token, 'rate_limited');
  // Past that: no engine.io session at all, an HTTP 429 with Retry-After.
  const res = await api(url, '/socket.io/?EIO=4&transport=polling');
  assertHttpError(res, 429, 'rate_limited');
  assert.ok(Number(res.headers.get('retry-after')) >= 1);
  // Another client address is not affected.
  const other = await connect(url, guest.token, { extraHeaders: { 'x-forwarded-for': '192.0.2.50' } });
  await waitFor(other, 'connection:established');
  const text = (await api(url, '/metrics')).text;
  assert.ok(metric(text, /^tandem_http_rate_limited_total\{limit="socket_handshake"\} (\d+)$/m) >= LIMIT + 1);
});
