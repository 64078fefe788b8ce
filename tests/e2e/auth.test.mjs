// Socket.IO handshake authentication: which tokens are refused with `unauthorized`, and what a
// valid connection receives.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer,
  serverFor,
  createGuest,
  connect,
  assertRefusedConnect,
  waitFor,
  decodeJwt,
  signJwt,
  hex,
  uname,
} from './harness.mjs';

const STATS_KEYS = ['totalUsers', 'onlineUsers', 'activeUsers', 'availableUsers', 'connectedUsers'];
const OTHER_SECRET = 'not-the-server-secret-not-the-server-sec';

describe('connect authentication', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server?.stop());

  // The claims of a real token of a real session, to be altered one thing at a time.
  async function realClaims() {
    const g = await createGuest(server.url, uname('Auth'));
    return { guest: g, claims: decodeJwt(g.token).payload };
  }

  test('control: a token re-signed by the test with the server secret is accepted', async () => {
    // Proves that the crafted tokens below fail for the one defect each carries.
    const { guest, claims } = await realClaims();
    const token = signJwt(claims, server.secret);
    const s = await connect(server.url, token);
    const est = await waitFor(s, 'connection:established');
    assert.equal(est.sessionId, guest.sessionId);
    s.close();
  });

  test('no token → unauthorized', async () => {
    await assertRefusedConnect(server.url, undefined, 'unauthorized');
  });

  test('an empty-string token → unauthorized', async () => {
    await assertRefusedConnect(server.url, '', 'unauthorized');
  });

  test('a garbage token → unauthorized', async () => {
    await assertRefusedConnect(server.url, 'garbage-token', 'unauthorized');
    await assertRefusedConnect(server.url, 'a.b.c', 'unauthorized');
  });

  test('a non-string token → unauthorized', async () => {
    await assertRefusedConnect(server.url, undefined, 'unauthorized', { auth: { token: 12345 } });
  });

  test('an alg "none" token → unauthorized', async () => {
    const { claims } = await realClaims();
    await assertRefusedConnect(server.url, signJwt(claims, '', 'none'), 'unauthorized');
  });

  test('an HS384 token signed with the right secret → unauthorized (HS256 is pinned)', async () => {
    const { claims } = await realClaims();
    await assertRefusedConnect(server.url, signJwt(claims, server.secret, 'HS384'), 'unauthorized');
  });

  test('a token signed with another secret → unauthorized', async () => {
    const { claims } = await realClaims();
    await assertRefusedConnect(server.url, signJwt(claims, OTHER_SECRET), 'unauthorized');
  });

  test('a token with a tampered payload (other session id, original signature) → unauthorized', async () => {
    const { guest } = await realClaims();
    const other = await createGuest(server.url, uname('Other'));
    const [h, , sig] = guest.token.split('.');
    const p = Buffer.from(JSON.stringify({ ...decodeJwt(guest.token).payload, sub: other.sessionId })).toString('base64url');
    await assertRefusedConnect(server.url, `${h}.${p}.${sig}`, 'unauthorized');
  });

  test('a correctly signed token whose exp is in the past → unauthorized', async () => {
    const { claims } = await realClaims();
    const now = Math.floor(Date.now() / 1000);
    const expired = { ...claims, iat: now - 7200, nbf: now - 7200, exp: now - 3600 };
    await assertRefusedConnect(server.url, signJwt(expired, server.secret), 'unauthorized');
  });

  test('a correctly signed token not valid yet (nbf in the future) → unauthorized', async () => {
    const { claims } = await realClaims();
    const now = Math.floor(Date.now() / 1000);
    await assertRefusedConnect(server.url, signJwt({ ...claims, nbf: now + 3600 }, server.secret), 'unauthorized');
  });

  for (const claim of ['jti', 'sub', 'exp', 'iat', 'nbf', 'iss', 'aud']) {
    test(`a correctly signed token without the "${claim}" claim → unauthorized`, async () => {
      const { claims } = await realClaims();
      const c = { ...claims };
      delete c[claim];
      await assertRefusedConnect(server.url, signJwt(c, server.secret), 'unauthorized');
    });
  }

  test('a correctly signed token with a wrong iss or aud → unauthorized', async () => {
    const { claims } = await realClaims();
    await assertRefusedConnect(server.url, signJwt({ ...claims, iss: 'someone-else' }, server.secret), 'unauthorized');
    await assertRefusedConnect(server.url, signJwt({ ...claims, aud: 'someone-else' }, server.secret), 'unauthorized');
  });

  test('a correctly signed token for a session that does not exist → unauthorized', async () => {
    const { claims } = await realClaims();
    await assertRefusedConnect(server.url, signJwt({ ...claims, sub: hex(32), jti: hex(32) }, server.secret), 'unauthorized');
  });

  test('a valid token → connection:established { sessionId, username, state: online } and realtime:stats', async () => {
    const name = uname('Valid');
    const g = await createGuest(server.url, name);
    const s = await connect(server.url, g.token);
    const est = await waitFor(s, 'connection:established');
    assert.equal(est.sessionId, g.sessionId);
    assert.equal(est.username, name);
    assert.equal(est.state, 'online');
    assert.ok(est.room === undefined || est.room === null, `no room expected when online, got ${JSON.stringify(est.room)}`);
    const stats = await waitFor(s, 'realtime:stats');
    for (const k of STATS_KEYS) {
      assert.ok(Number.isInteger(stats?.[k]) && stats[k] >= 0, `realtime:stats.${k} = ${JSON.stringify(stats?.[k])}`);
    }
    assert.ok(stats.onlineUsers >= 1, 'the connected guest itself is online');
    s.close();
  });
});

test('a token from another tandem instance (other secret) is refused', async (t) => {
  // Two servers, two secrets: a genuine token of one must not open the other.
  const s1 = await serverFor(t);
  const s2 = await serverFor(t);
  const g = await createGuest(s1.url, uname('Cross'));
  await assertRefusedConnect(s2.url, g.token, 'unauthorized');
});

test('an origin that is not allowed → origin_not_allowed; an allowed one connects', async (t) => {
  const server = await serverFor(t, ['--allowed-origin', 'http://allowed.test']);
  const g = await createGuest(server.url, uname('Orig'));
  await assertRefusedConnect(server.url, g.token, 'origin_not_allowed', { extraHeaders: { origin: 'http://evil.test' } });
  const s = await connect(server.url, g.token, { extraHeaders: { origin: 'http://allowed.test' } });
  await waitFor(s, 'connection:established');
  s.close();
});
