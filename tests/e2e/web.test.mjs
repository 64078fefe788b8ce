// The embedded web client (/, /app.js, /app.css, /favicon.svg: types, caching, security headers)
// and GET /api/ice-servers.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  serverFor,
  startServer,
  api,
  createGuest,
  assertHttpError,
  decodeJwt,
  signJwt,
  connect,
  waitFor,
  hex,
  uname,
  pair,
  emitAck,
  assertOk,
} from './harness.mjs';

/** Two paired guests, `a` calling `b` (ringing); closes the sockets when the test ends. */
async function ringing(t, url) {
  const p = await pair(url);
  t.after(() => { p.a.close(); p.b.close(); });
  assertOk(await emitAck(p.a, 'call:request', { video: false }), 'call:request');
  await waitFor(p.b, 'call:incoming');
  return p;
}

const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; " +
  "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; " +
  "frame-ancestors 'none'; form-action 'self'";

/** fetch without the JSON helper: status, headers and the raw body bytes. */
async function raw(url, path, { method = 'GET', headers = {} } = {}) {
  const res = await fetch(`${url}${path}`, { method, headers, signal: AbortSignal.timeout(10_000) });
  const body = Buffer.from(await res.arrayBuffer());
  return { status: res.status, headers: res.headers, body };
}

function assertCommonHeaders(res, what) {
  assert.equal(res.headers.get('cache-control'), 'no-cache', `${what}: Cache-Control`);
  assert.equal(res.headers.get('x-content-type-options'), 'nosniff', `${what}: X-Content-Type-Options`);
  assert.equal(res.headers.get('referrer-policy'), 'no-referrer', `${what}: Referrer-Policy`);
  const etag = res.headers.get('etag');
  assert.match(etag ?? '', /^"[^"]+"$/, `${what}: ETag must be a strong quoted tag, got ${etag}`);
  return etag;
}

describe('web client', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server?.stop());

  test('GET / → 200 text/html with the CSP, Permissions-Policy, nosniff, no-cache and an ETag', async () => {
    const res = await raw(server.url, '/');
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'text/html; charset=utf-8');
    assertCommonHeaders(res, 'GET /');
    assert.equal(res.headers.get('content-security-policy'), CSP);
    assert.equal(res.headers.get('permissions-policy'), 'camera=(self), microphone=(self)');
    assert.match(res.body.toString('utf8'), /<html/i, 'the body is not an HTML page');
    assert.equal(Number(res.headers.get('content-length')), res.body.length);
  });

  test('the ETag is stable, and If-None-Match with it → 304 without a body', async () => {
    const first = await raw(server.url, '/');
    const etag = first.headers.get('etag');
    const again = await raw(server.url, '/');
    assert.equal(again.headers.get('etag'), etag, 'the ETag changed between two requests');

    const res = await raw(server.url, '/', { headers: { 'if-none-match': etag } });
    assert.equal(res.status, 304);
    assert.equal(res.body.length, 0);
    assert.equal(res.headers.get('etag'), etag);
    assert.equal(res.headers.get('cache-control'), 'no-cache');

    // A list that contains the tag, its weak form and * also match; another tag does not.
    for (const inm of [`"nope", ${etag}`, `W/${etag}`, '*']) {
      const r = await raw(server.url, '/', { headers: { 'if-none-match': inm } });
      assert.equal(r.status, 304, `If-None-Match: ${inm}`);
    }
    const other = await raw(server.url, '/', { headers: { 'if-none-match': '"not-the-tag"' } });
    assert.equal(other.status, 200);
    assert.ok(other.body.length > 0);
  });

  test('HEAD / → 200 with the same headers and no body', async () => {
    const get = await raw(server.url, '/');
    const res = await raw(server.url, '/', { method: 'HEAD' });
    assert.equal(res.status, 200);
    assert.equal(res.body.length, 0);
    assert.equal(res.headers.get('content-type'), 'text/html; charset=utf-8');
    assert.equal(res.headers.get('etag'), get.headers.get('etag'));
    assert.equal(res.headers.get('content-security-policy'), CSP);
  });

  test('/app.js is JavaScript, /app.css is CSS, /favicon.svg is SVG; each with its own ETag', async () => {
    const tags = new Set();
    for (const [path, type] of [
      ['/app.js', /^text\/javascript; charset=utf-8$/],
      ['/app.css', /^text\/css; charset=utf-8$/],
      ['/favicon.svg', /^image\/svg\+xml/],
    ]) {
      const res = await raw(server.url, path);
      assert.equal(res.status, 200, path);
      assert.match(res.headers.get('content-type') ?? '', type, `${path}: Content-Type`);
      tags.add(assertCommonHeaders(res, path));
      assert.ok(res.body.length > 0, `${path}: empty body`);
      const again = await raw(server.url, path, { headers: { 'if-none-match': res.headers.get('etag') } });
      assert.equal(again.status, 304, `${path}: If-None-Match`);
    }
    tags.add((await raw(server.url, '/')).headers.get('etag'));
    assert.equal(tags.size, 4, 'every file must have its own ETag');
  });

  test('an unknown path → 404; the web routes take GET/HEAD only', async () => {
    for (const path of ['/nope', '/index.html', '/app.js.map', '/web/dist/app.js', '/chat']) {
      const res = await raw(server.url, path);
      assert.equal(res.status, 404, path);
    }
    assert.equal((await raw(server.url, '/', { method: 'POST' })).status, 405);
    // /api keeps its JSON errors.
    assertHttpError(await api(server.url, '/api/nope'), 404, 'not_found');
  });

  test('/metrics labels the web routes by their path and unknown paths as "other"', async () => {
    await raw(server.url, '/app.css');
    await raw(server.url, `/unknown-${hex(8)}`);
    const text = (await api(server.url, '/metrics')).text;
    assert.match(text, /^tandem_http_requests_total\{route="\/app\.css",status="200"\} \d+/m);
    assert.match(text, /^tandem_http_requests_total\{route="other",status="404"\} \d+/m);
    assert.doesNotMatch(text, /route="\/unknown-/, 'an unknown path became a route label');
  });
});

describe('GET /api/ice-servers', () => {
  let server;
  before(async () => {
    server = await startServer(['--max-sockets-per-guest', '1']);
  });
  after(() => server?.stop());

  test('without a token → 401 unauthorized', async () => {
    assertHttpError(await api(server.url, '/api/ice-servers'), 401, 'unauthorized');
    assertHttpError(
      await api(server.url, '/api/ice-servers', { headers: { authorization: 'Basic abc' } }),
      401,
      'unauthorized',
    );
  });

  test('with a garbage or forged token → 401 unauthorized', async () => {
    assertHttpError(await api(server.url, '/api/ice-servers', { token: 'not.a.jwt' }), 401, 'unauthorized');
    const g = await createGuest(server.url, uname('Forge'));
    const forged = signJwt(decodeJwt(g.token).payload, 'another-secret-another-secret-another-se');
    assertHttpError(await api(server.url, '/api/ice-servers', { token: forged }), 401, 'unauthorized');
  });

  test('a guest with no call → 409 no_call (credentials are for calls only)', async () => {
    const g = await createGuest(server.url, uname('Ice'));
    assertHttpError(await api(server.url, '/api/ice-servers', { token: g.token }), 409, 'no_call');
  });

  test('a guest in a ringing call, holding its maximum sockets → 200 { iceServers: [TURN with credentials for the call], ttl: 3600 }', async (t) => {
    const { ga: g, gb } = await ringing(t, server.url);
    for (const guest of [g, gb]) {
      const res = await api(server.url, '/api/ice-servers', { token: guest.token });
      assert.equal(res.status, 200, res.text);
      assert.match(res.headers.get('content-type') ?? '', /application\/json/);
      assert.equal(res.headers.get('cache-control'), 'no-store');
      assert.equal(res.body.ttl, 3600);
      assert.equal(res.body.iceServers.length, 1);
      const [entry] = res.body.iceServers;
      assert.deepEqual(Object.keys(entry).sort(), ['credential', 'urls', 'username']);
      // The harness starts TURN on a free port without TLS: UDP and TCP URLs only.
      assert.equal(entry.urls.length, 2);
      assert.match(entry.urls[0], /^turn:127\.0\.0\.1:\d+\?transport=udp$/);
      assert.match(entry.urls[1], /^turn:127\.0\.0\.1:\d+\?transport=tcp$/);
      // <expiry>:<guest>:<call>
      assert.match(entry.username, new RegExp(`^\\d+:${guest.sessionId}:\\d+$`));
      assert.match(entry.credential, /^[A-Za-z0-9+/]+=*$/);
    }
  });

  test('with TURN off (--turn-enabled=false) → 200 exactly { iceServers: [], ttl: 3600 } in a call', async (t) => {
    const off = await startServer(['--turn-enabled=false']);
    t.after(() => off.stop());
    const { ga: g } = await ringing(t, off.url);
    const res = await api(off.url, '/api/ice-servers', { token: g.token });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.body, { iceServers: [], ttl: 3600 });
  });

  test('a correctly signed token whose session does not exist → 401 unauthorized', async () => {
    const g = await createGuest(server.url, uname('Gone'));
    const { payload } = decodeJwt(g.token);
    let sub = hex(payload.sub.length);
    while (sub === payload.sub) sub = hex(payload.sub.length);
    const token = signJwt({ ...payload, sub }, server.secret);
    assertHttpError(await api(server.url, '/api/ice-servers', { token }), 401, 'unauthorized');
  });

  test('POST /api/ice-servers → 405 method_not_allowed', async () => {
    const g = await createGuest(server.url, uname('Post'));
    assertHttpError(await api(server.url, '/api/ice-servers', { method: 'POST', token: g.token }), 405, 'method_not_allowed');
  });
});

test('GET /api/ice-servers after a restart (same secret, session gone) → 401 unauthorized', async (t) => {
  const first = await serverFor(t);
  const { ga: g } = await ringing(t, first.url);
  assert.equal((await api(first.url, '/api/ice-servers', { token: g.token })).status, 200);
  await first.stop();
  const second = await serverFor(t, ['--jwt-secret', first.secret]);
  assertHttpError(await api(second.url, '/api/ice-servers', { token: g.token }), 401, 'unauthorized');
});

test('GET /api/ice-servers is rate limited like every /api route (429 with Retry-After)', async (t) => {
  const server = await serverFor(t, ['--http-requests-per-min', '3']);
  const g = await createGuest(server.url, uname('Lim'));
  const statuses = [];
  for (let i = 0; i < 6; i++) statuses.push((await api(server.url, '/api/ice-servers', { token: g.token })).status);
  assert.ok(statuses.includes(429), `never rate limited: ${statuses.join(', ')}`);
  const last = await api(server.url, '/api/ice-servers', { token: g.token });
  assertHttpError(last, 429, 'rate_limited');
  assert.ok(Number(last.headers.get('retry-after')) >= 1, 'no Retry-After');
});
