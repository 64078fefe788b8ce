// HTTP routes: /api/guest, /api/guest/refresh, /api/stats, /healthz, /metrics, errors, CORS,
// shutdown notice.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer,
  serverFor,
  api,
  createGuest,
  assertHttpError,
  decodeJwt,
  signJwt,
  connect,
  waitFor,
  sleep,
  uname,
} from './harness.mjs';

const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;
const HEX = /^[0-9a-f]+$/;
const STATS_KEYS = ['totalUsers', 'onlineUsers', 'activeUsers', 'availableUsers', 'connectedUsers'];

function assertGuestShape(body, ttlSecs = 7200) {
  assert.ok(body && typeof body === 'object', 'body is not a JSON object');
  assert.equal(typeof body.token, 'string');
  assert.equal(body.token.split('.').length, 3, 'token is not a JWT');
  assert.equal(typeof body.sessionId, 'string');
  assert.match(body.sessionId, HEX, 'sessionId must be lowercase hex');
  assert.equal(typeof body.username, 'string');
  assert.equal(typeof body.expiresAt, 'string');
  assert.match(body.expiresAt, RFC3339, `expiresAt is not RFC 3339: ${body.expiresAt}`);
  const exp = Date.parse(body.expiresAt);
  assert.ok(Number.isFinite(exp), 'expiresAt does not parse');
  const ahead = (exp - Date.now()) / 1000;
  assert.ok(Math.abs(ahead - ttlSecs) < 120, `expiresAt is ${ahead.toFixed(0)} s ahead, expected about ${ttlSecs}`);
}

describe('HTTP API', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server?.stop());

  test('POST /api/guest with a username → 201 { token, sessionId, username, expiresAt }', async () => {
    const name = uname('Alice');
    const res = await api(server.url, '/api/guest', { method: 'POST', body: { username: name } });
    assert.equal(res.status, 201, res.text);
    assert.match(res.headers.get('content-type') ?? '', /application\/json/);
    assertGuestShape(res.body);
    assert.equal(res.body.username, name);
  });

  test('POST /api/guest accepts a 24-character username with letters, digits, space, _ and -', async () => {
    const name = 'Ab1 _-' + 'x'.repeat(18);
    assert.equal(name.length, 24);
    const res = await api(server.url, '/api/guest', { method: 'POST', body: { username: name } });
    assert.equal(res.status, 201, res.text);
    assert.equal(res.body.username, name);
  });

  test('POST /api/guest without a username picks Guest-xxxx (empty body, {}, null)', async () => {
    const variants = [
      { label: 'no body', opts: { method: 'POST' } },
      { label: '{}', opts: { method: 'POST', body: {} } },
      { label: '{username:null}', opts: { method: 'POST', body: { username: null } } },
    ];
    const ids = new Set();
    for (const v of variants) {
      const res = await api(server.url, '/api/guest', v.opts);
      assert.equal(res.status, 201, `${v.label}: ${res.status} ${res.text}`);
      assertGuestShape(res.body);
      assert.match(res.body.username, /^Guest-[0-9a-f]{4}$/, `${v.label}: username ${res.body.username}`);
      ids.add(res.body.sessionId);
    }
    assert.equal(ids.size, variants.length, 'every guest must get its own sessionId');
  });

  test('the token is an HS256 JWT with sub/iat/nbf/exp/jti/iss/aud and a 2 h TTL', async () => {
    const g = await createGuest(server.url, uname('Jwt'));
    const { header, payload } = decodeJwt(g.token);
    assert.equal(header.alg, 'HS256');
    assert.equal(payload.sub, g.sessionId);
    assert.equal(payload.iss, 'tandem');
    const aud = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
    assert.ok(aud.includes('tandem-guest'), `aud is ${JSON.stringify(payload.aud)}`);
    for (const k of ['iat', 'nbf', 'exp']) assert.equal(typeof payload[k], 'number', `claim ${k}`);
    assert.ok(typeof payload.jti === 'string' && payload.jti.length > 0, 'claim jti');
    assert.equal(payload.exp - payload.iat, 7200);
    assert.ok(Math.abs(payload.exp * 1000 - Date.parse(g.expiresAt)) <= 1000, 'exp and expiresAt disagree');
  });

  for (const [label, username] of [
    ['25 characters', 'a'.repeat(25)],
    ['<script>', '<script>'],
    ['empty string', ''],
    ['only spaces', '    '],
    ['a dot', 'a.b'],
  ]) {
    test(`POST /api/guest with an invalid username (${label}) → 400 invalid_username`, async () => {
      const res = await api(server.url, '/api/guest', { method: 'POST', body: { username } });
      assertHttpError(res, 400, 'invalid_username');
    });
  }

  test('POST /api/guest with malformed JSON → 400 invalid_body', async () => {
    const res = await api(server.url, '/api/guest', { method: 'POST', body: '{"username": ' });
    assertHttpError(res, 400, 'invalid_body');
  });

  test('POST /api/guest/refresh → 200 with the same sessionId, a new token and a later expiresAt', async () => {
    const g = await createGuest(server.url, uname('Ref'));
    await sleep(1100); // expiresAt has one-second resolution
    const res = await api(server.url, '/api/guest/refresh', { method: 'POST', token: g.token });
    assert.equal(res.status, 200, res.text);
    assertGuestShape(res.body);
    assert.equal(res.body.sessionId, g.sessionId);
    assert.equal(res.body.username, g.username);
    assert.notEqual(res.body.token, g.token);
    assert.ok(Date.parse(res.body.expiresAt) > Date.parse(g.expiresAt), `${res.body.expiresAt} is not later than ${g.expiresAt}`);

    // The new token opens a socket on the same session.
    const s = await connect(server.url, res.body.token);
    const est = await waitFor(s, 'connection:established');
    assert.equal(est.sessionId, g.sessionId);
    s.close();
  });

  test('POST /api/guest/refresh without a token → 401 unauthorized', async () => {
    assertHttpError(await api(server.url, '/api/guest/refresh', { method: 'POST' }), 401, 'unauthorized');
  });

  test('POST /api/guest/refresh with a garbage token → 401 unauthorized', async () => {
    assertHttpError(await api(server.url, '/api/guest/refresh', { method: 'POST', token: 'not.a.jwt' }), 401, 'unauthorized');
  });

  test('POST /api/guest/refresh with a token signed by another secret → 401 unauthorized', async () => {
    const g = await createGuest(server.url, uname('Forge'));
    const forged = signJwt(decodeJwt(g.token).payload, 'another-secret-another-secret-another-se');
    assertHttpError(await api(server.url, '/api/guest/refresh', { method: 'POST', token: forged }), 401, 'unauthorized');
  });

  test('POST /api/guest/refresh with an expired token → 401 unauthorized', async () => {
    const g = await createGuest(server.url, uname('Exp'));
    const now = Math.floor(Date.now() / 1000);
    const claims = { ...decodeJwt(g.token).payload, iat: now - 7200, nbf: now - 7200, exp: now - 3600 };
    const expired = signJwt(claims, server.secret);
    assertHttpError(await api(server.url, '/api/guest/refresh', { method: 'POST', token: expired }), 401, 'unauthorized');
  });

  test('GET /api/stats → 200 with the five counters', async () => {
    const res = await api(server.url, '/api/stats');
    assert.equal(res.status, 200, res.text);
    for (const k of STATS_KEYS) {
      assert.ok(Number.isInteger(res.body?.[k]) && res.body[k] >= 0, `${k} = ${JSON.stringify(res.body?.[k])}`);
    }
  });

  test('GET /healthz → 200 { status: "ok" }', async () => {
    const res = await api(server.url, '/healthz');
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, { status: 'ok' });
  });

  test('GET /metrics → 200 Prometheus text with tandem_ metrics', async () => {
    const res = await api(server.url, '/metrics');
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
    assert.match(res.text, /^tandem_[a-z0-9_]+(\{[^}]*\})? [-+0-9.eE]+/m, 'no tandem_ sample line');
    assert.match(res.text, /^# TYPE tandem_/m, 'no # TYPE line for a tandem_ metric');
  });

  test('an unknown /api route → 404 not_found JSON error', async () => {
    assertHttpError(await api(server.url, '/api/definitely-not-a-route'), 404, 'not_found');
    assertHttpError(await api(server.url, '/api/guest/nope', { method: 'POST' }), 404, 'not_found');
  });

  test('a known /api route with the wrong method → 405 method_not_allowed JSON error', async () => {
    assertHttpError(await api(server.url, '/api/guest'), 405, 'method_not_allowed');
    assertHttpError(await api(server.url, '/api/stats', { method: 'DELETE' }), 405, 'method_not_allowed');
  });
});

test('--token-ttl-secs sets the token lifetime', async (t) => {
  const server = await serverFor(t, ['--token-ttl-secs', '60']);
  const g = await createGuest(server.url, uname('Ttl'));
  assertGuestShape(g, 60);
  const { payload } = decodeJwt(g.token);
  assert.equal(payload.exp - payload.iat, 60);
});

test('CORS: preflight is granted to an allowed origin only', async (t) => {
  const server = await serverFor(t, ['--allowed-origin', 'http://allowed.test']);
  const preflight = (origin) =>
    api(server.url, '/api/guest', {
      method: 'OPTIONS',
      headers: {
        origin,
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'content-type',
      },
    });
  const ok = await preflight('http://allowed.test');
  assert.ok(ok.status < 300, `preflight for the allowed origin answered ${ok.status}`);
  assert.equal(ok.headers.get('access-control-allow-origin'), 'http://allowed.test');
  const bad = await preflight('http://evil.test');
  const acao = bad.headers.get('access-control-allow-origin');
  assert.ok(acao !== 'http://evil.test' && acao !== '*', `evil origin granted: ${acao}`);
});

test('SIGTERM: connected sockets get server:shutdown', async (t) => {
  const server = await serverFor(t);
  const g = await createGuest(server.url, uname('Bye'));
  const s = await connect(server.url, g.token);
  await waitFor(s, 'connection:established');
  server.proc.kill('SIGTERM');
  const payload = await waitFor(s, 'server:shutdown', 5000);
  assert.deepEqual(payload, {});
});

test('SIGTERM: while draining, /healthz answers 503 { status: "shutting_down" }', async (t) => {
  const server = await serverFor(t);
  const g = await createGuest(server.url, uname('Drain'));
  // An open socket keeps the server draining (up to its shutdown grace).
  const s = await connect(server.url, g.token);
  await waitFor(s, 'connection:established');
  server.proc.kill('SIGTERM');
  await waitFor(s, 'server:shutdown', 5000);
  // Two tries: the first may land on a pooled keep-alive connection the server has just closed.
  let res;
  let lastErr;
  for (let i = 0; i < 2 && !res; i++) {
    try {
      res = await api(server.url, '/healthz');
    } catch (err) {
      lastErr = err;
    }
  }
  assert.ok(res, `GET /healthz during the drain failed: ${lastErr?.cause?.code ?? lastErr?.message}`);
  assert.equal(res.status, 503);
  assert.deepEqual(res.body, { status: 'shutting_down' });
});

test('memory above 80% of --memory-budget-mb: POST /api/guest → 503 server_busy', async (t) => {
  const server = await serverFor(t, ['--memory-budget-mb', '1']);
  assertHttpError(await api(server.url, '/api/guest', { method: 'POST', body: {} }), 503, 'server_busy');
  // The process itself is healthy.
  assert.equal((await api(server.url, '/healthz')).status, 200);
});
