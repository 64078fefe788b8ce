// The HTTP port against an attacker with a TCP socket (issue 13, "No cheap exhaustion"):
// slowloris headers and idle keep-alive connections are closed by the header timeout, a request
// body that stalls is dropped, connections per client address are capped exactly (also when they
// arrive at once), a descriptor flood under `ulimit -n 256` leaves the server serving, proxy
// headers count only from --trusted-proxy (and IPv6 clients are limited per /64), and /metrics
// can live on its own address.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { serverFor, freePort, api, createGuest, assertHttpError, sleep, rawConn, within } from './harness.mjs';

test('slowloris: headers trickled byte by byte are cut off at the header timeout; an idle keep-alive connection too', async (t) => {
  const server = await serverFor(t, ['--http-header-timeout-secs', '2']);
  const slow = await rawConn(server.port);
  t.after(() => slow.sock.destroy());
  slow.sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
  // One header byte a second would keep a timeout-per-read server busy forever.
  const trickle = setInterval(() => { if (!slow.isClosed()) slow.sock.write('X'); }, 1000);
  t.after(() => clearInterval(trickle));
  assert.ok(await within(slow.closed, 8000), 'the slow client was not cut off');
  assert.doesNotMatch(slow.data(), /200 OK/, 'no answer to an unfinished request');

  // A finished request gets its answer; the connection then idles and is closed.
  const idle = await rawConn(server.port);
  t.after(() => idle.sock.destroy());
  idle.sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
  assert.ok(await within(idle.closed, 8000), 'the idle keep-alive connection stayed open');
  assert.match(idle.data(), /^HTTP\/1\.1 200 OK/);
  // The server is fine.
  assert.equal((await api(server.url, '/healthz')).status, 200);
});

test('a request body that stalls is dropped at the body timeout', async (t) => {
  const server = await serverFor(t, ['--http-body-timeout-secs', '2']);
  const c = await rawConn(server.port);
  t.after(() => c.sock.destroy());
  c.sock.write('POST /api/guest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"user');
  // It either answers (an error, never 201) or closes; not later than the timeout plus slack.
  const done = new Promise((resolve) => {
    const check = setInterval(() => {
      if (c.isClosed() || /^HTTP\/1\.1 \d{3}/.test(c.data())) { clearInterval(check); resolve(); }
    }, 100);
  });
  assert.ok(await within(done, 8000), 'the stalled upload was kept');
  assert.doesNotMatch(c.data(), /^HTTP\/1\.1 201/);
});

test('HTTP connections per client address: exactly the limit, also when they arrive at once', async (t) => {
  const LIMIT = 5;
  const server = await serverFor(t, [
    '--max-http-connections-per-ip', String(LIMIT), '--http-header-timeout-secs', '3',
  ]);
  // The harness's own keep-alive connection (its start-up probe) must be gone first.
  await sleep(3500);
  // One at a time: LIMIT stay open, the next is closed at once.
  const held = [];
  for (let i = 0; i < LIMIT; i++) held.push(await rawConn(server.port));
  const extra = await rawConn(server.port);
  assert.ok(await within(extra.closed, 3000), `connection ${LIMIT + 1} was kept`);
  await sleep(200);
  assert.ok(held.every((c) => !c.isClosed()), 'the first LIMIT stay open');
  for (const c of held) c.sock.destroy();
  await sleep(300);
  // At once: of LIMIT + 3 simultaneous connections exactly LIMIT survive.
  const burst = await Promise.all(Array.from({ length: LIMIT + 3 }, () => rawConn(server.port)));
  t.after(() => burst.forEach((c) => c.sock.destroy()));
  await sleep(1000);
  const open = burst.filter((c) => !c.isClosed()).length;
  assert.equal(open, LIMIT, `open after a burst of ${LIMIT + 3}`);
  // They serve requests.
  const [first] = burst.filter((c) => !c.isClosed());
  first.sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
  await sleep(300);
  assert.match(first.data(), /^HTTP\/1\.1 200 OK/);
  for (const c of burst) c.sock.destroy();
  await sleep(300);
  const text = (await api(server.url, '/metrics')).text;
  assert.match(text, /tandem_connections_refused_total\{listener="http",reason="per_ip"\} ([4-9]|\d\d+)/);
});

test('a descriptor flood under ulimit -n 256 leaves the server serving (HTTP keeps to its share of the descriptors)', async (t) => {
  const server = await serverFor(t, ['--max-http-connections-per-ip', '100000', '--http-header-timeout-secs', '30'], {
    ulimitNofile: 256,
  });
  const flood = [];
  t.after(() => flood.forEach((c) => c.sock.destroy()));
  for (let i = 0; i < 400; i++) {
    try {
      flood.push(await rawConn(server.port));
    } catch {
      break;
    }
  }
  await sleep(500);
  for (const c of flood) c.sock.destroy();
  await sleep(500);
  // Back to normal: requests are served, the process is alive, and it said what happened.
  const res = await api(server.url, '/healthz');
  assert.equal(res.status, 200);
  const text = (await api(server.url, '/metrics')).text;
  assert.match(text, /tandem_open_files_limit 256/);
  // HTTP's share of the 256 descriptors (half) is full long before the process runs out: the
  // rest are refused at accept, counted (an EMFILE would be counted and backed off instead).
  const count = (re) => Number(re.exec(text)?.[1] ?? 0);
  const refused = count(/tandem_connections_refused_total\{listener="http",reason="total"\} (\d+)/);
  const emfile = count(/tandem_accept_errors_total\{kind="descriptors",listener="http"\} (\d+)/);
  assert.ok(refused + emfile >= 100, `refused ${refused}, EMFILE ${emfile}`);
  assert.equal(server.exited(), null);
});

test('Forwarded / X-Forwarded-For count only from --trusted-proxy; IPv6 clients are limited per /64', async (t) => {
  const trusted = await serverFor(t, ['--trusted-proxy', '127.0.0.0/8', '--guest-creations-per-min', '2']);
  const as = (url, xff, extra = {}) => api(url, '/api/guest', { method: 'POST', headers: { 'x-forwarded-for': xff, ...extra } });
  assert.equal((await as(trusted.url, '203.0.113.1')).status, 201);
  assert.equal((await as(trusted.url, '203.0.113.1')).status, 201);
  assertHttpError(await as(trusted.url, '203.0.113.1'), 429, 'rate_limited');
  // Another client behind the same proxy has its own limit; a spoofed left-hand entry is ignored.
  assert.equal((await as(trusted.url, '198.51.100.1, 203.0.113.2')).status, 201);
  // RFC 7239 Forwarded too.
  const fwd = (v) => api(trusted.url, '/api/guest', { method: 'POST', headers: { forwarded: v } });
  assert.equal((await fwd('for="[2001:db8:1:2::1]:4711"')).status, 201);
  assert.equal((await fwd('for="[2001:db8:1:2::99]"')).status, 201);
  // The same /64: one client.
  assertHttpError(await fwd('for="[2001:db8:1:2:ffff::1]"'), 429, 'rate_limited');
  assert.equal((await fwd('for="[2001:db8:1:3::1]"')).status, 201);

  // Without --trusted-proxy the headers are ignored: every request is 127.0.0.1's.
  const plain = await serverFor(t, ['--guest-creations-per-min', '2']);
  assert.equal((await as(plain.url, '203.0.113.1')).status, 201);
  assert.equal((await as(plain.url, '203.0.113.2')).status, 201);
  assertHttpError(await as(plain.url, '203.0.113.3'), 429, 'rate_limited');
});

test('--metrics-bind serves /metrics on its own address (and not on --bind)', async (t) => {
  const port = await freePort();
  const server = await serverFor(t, ['--metrics-bind', `127.0.0.1:${port}`]);
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(res.status, 200);
  assert.match(await res.text(), /tandem_open_files_limit \d+/);
  const main = await api(server.url, '/metrics');
  assert.equal(main.status, 404);
  await createGuest(server.url);
});
