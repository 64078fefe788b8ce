// Many nodes on one Redis (--redis-url), the shell side: the start checks, the node registry
// (every node sees every other, a killed one goes within 10 s, a drained one leaves first),
// and Redis lost and back (/readyz 503 then 200, the node registers again). Each test starts
// its own redis-server on a free loopback port and stops it (and its nodes) by PID.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  api, clusterFor, createGuest, freePort, guestSocket, redisClusterFor, redisFor, runToExit,
  serverFor, sleep, startRedis, waitFor,
} from './harness.mjs';

const NODES_KEY = 'tandem:{cluster}:nodes';
const INFO_KEY = 'tandem:{cluster}:node-info';
const EPOCH_KEY = 'tandem:{cluster}:epoch';

/** The value of an unlabelled metric (or one with exactly `labels`), or null. */
async function metric(url, name, labels = '') {
  const text = (await api(url, '/metrics')).text;
  const escaped = `${name}${labels}`.replace(/[{}"=]/g, (c) => `\\${c}`);
  const m = new RegExp(`^${escaped} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : null;
}

/** Every `tandem_redis_errors_total` series added up. */
async function errorCount(url) {
  const text = (await api(url, '/metrics')).text;
  return [...text.matchAll(/^tandem_redis_errors_total\{kind="\w+"\} (\d+)$/gm)]
    .reduce((sum, m) => sum + Number(m[1]), 0);
}

/** Polls `probe` every `everyMs` until it returns a truthy value; resolves with it and the time taken. */
async function until(what, probe, timeoutMs = 10_000, everyMs = 100) {
  const started = Date.now();
  let last;
  for (;;) {
    try {
      last = await probe();
    } catch (err) {
      last = err;
    }
    if (last && !(last instanceof Error)) return { value: last, ms: Date.now() - started };
    if (Date.now() - started > timeoutMs) {
      throw new Error(`${what}: not within ${timeoutMs} ms (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    }
    await sleep(everyMs);
  }
}

/** The registry as kept in Redis: Map id -> entry, with `beat` (the sorted set's score). */
async function registry(redis) {
  const flat = await redis.command('HGETALL', INFO_KEY);
  const beats = await redis.command('ZRANGE', NODES_KEY, '0', '-1', 'WITHSCORES');
  const scores = new Map();
  for (let i = 0; i < beats.length; i += 2) scores.set(beats[i], Number(beats[i + 1]));
  const out = new Map();
  for (let i = 0; i < flat.length; i += 2) {
    out.set(flat[i], { ...JSON.parse(flat[i + 1]), beat: scores.get(flat[i]) });
  }
  return out;
}

/** The registry id of the node named `name`. */
async function idOf(redis, name) {
  const { value } = await until(`node ${name} in the registry`, async () => {
    for (const [id, entry] of await registry(redis)) if (entry.name === name) return id;
    return null;
  });
  return value;
}

/** Waits until every node in `nodes` counts `n` live nodes; resolves with the time it took. */
async function allSee(nodes, n, timeoutMs = 10_000) {
  const { ms } = await until(`every node counts ${n} nodes`, async () => {
    const counts = await Promise.all(nodes.map((s) => metric(s.url, 'tandem_cluster_nodes')));
    return counts.every((c) => c === n) ? counts : null;
  }, timeoutMs);
  return ms;
}

/** Minimal flags for a tandem that refuses to start (no port of the host's defaults taken). */
async function refusalArgs() {
  return [
    '--bind', `127.0.0.1:${await freePort()}`, '--node-ip', '127.0.0.1', '--rtc-udp-port', '0',
    '--rtc-tcp-port', '0', '--turn-port', '0', '--turn-tls-port', '0', '--log-level', 'warn',
  ];
}

test('with --redis-url, start is refused (exit 2, one sentence) unless --jwt-secret and --turn-secret are given', async () => {
  const url = `redis://127.0.0.1:${await freePort()}`;
  const none = await runToExit([...(await refusalArgs()), '--redis-url', url]);
  assert.equal(none.code, 2, none.output);
  const line = none.output.trim();
  assert.equal(line.split('\n').length, 1, `one line: ${line}`);
  assert.match(line, /^tandem: with redis_url set, every node must sign tokens and TURN credentials with the same keys/);
  assert.match(line, /--jwt-secret/);
  assert.match(line, /--turn-secret/);

  const jwtOnly = await runToExit([
    ...(await refusalArgs()), '--redis-url', url, '--jwt-secret', 'j'.repeat(40),
  ]);
  assert.equal(jwtOnly.code, 2, jwtOnly.output);
  assert.match(jwtOnly.output, /--turn-secret/);
  assert.doesNotMatch(jwtOnly.output, /--jwt-secret/);

  // The same through the environment, and a malformed URL whose password is never echoed.
  const bad = await runToExit([
    ...(await refusalArgs()), '--redis-url', 'redis://admin:hunter2hunter2@bad host:1',
    '--jwt-secret', 'j'.repeat(40), '--turn-secret', 't'.repeat(20),
  ]);
  assert.equal(bad.code, 2, bad.output);
  assert.match(bad.output, /redis_url is invalid/);
  assert.doesNotMatch(bad.output, /hunter2/);
});

test('Redis unreachable at start: tandem refuses to start with a clear message and no password in it', async () => {
  const port = await freePort(); // nothing listens there
  const started = Date.now();
  const run = await runToExit([
    ...(await refusalArgs()), '--redis-url', `redis://:hunter2hunter2@127.0.0.1:${port}/0`,
    '--jwt-secret', 'j'.repeat(40), '--turn-secret', 't'.repeat(20),
  ]);
  assert.notEqual(run.code, 0, run.output);
  assert.equal(run.signal, null);
  assert.ok(Date.now() - started < 10_000, 'refused within 10 s');
  assert.match(run.output, new RegExp(`cannot reach Redis at redis://:\\[redacted\\]@127\\.0\\.0\\.1:${port}/0`));
  assert.match(run.output, /refused/i);
  assert.doesNotMatch(run.output, /hunter2/);
  assert.doesNotMatch(run.output, /tandem listening/);
});

test('three nodes on one Redis: each counts all three; the registry holds their addresses, names and load', async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 3, { media: true });
  const ms = await allSee(nodes, 3);
  t.diagnostic(`all three see three after ${ms} ms`);
  for (const node of nodes) {
    const ready = await api(node.url, '/readyz');
    assert.equal(ready.status, 200, ready.text);
    assert.equal(await metric(node.url, 'tandem_redis_up'), 1);
    assert.ok(await metric(node.url, 'tandem_redis_command_seconds_count', '{command="heartbeat"}') >= 1);
    assert.equal(await metric(node.url, 'tandem_cluster_node_info', `{node="${node.name}"}`), 1);
  }
  // A guest on node 2 shows in its load.
  const guest = await guestSocket(nodes[1].url);
  const reg = await until('node 2 publishes its socket', async () => {
    const r = await registry(redis);
    return [...r.values()].some((e) => e.name === nodes[1].name && e.load.sockets === 1) ? r : null;
  });
  guest.socket.close();
  const entries = [...reg.value.entries()];
  assert.equal(entries.length, 3);
  const ids = entries.map(([id]) => id);
  assert.equal(new Set(ids).size, 3, 'distinct ids');
  for (const id of ids) assert.match(id, /^[0-9a-f]{32}$/, 'a random id, not an address');
  for (const node of nodes) {
    const [, entry] = entries.find(([, e]) => e.name === node.name);
    assert.equal(entry.http, `127.0.0.1:${node.port}`);
    assert.equal(entry.media, `127.0.0.1:${node.rtcUdpPort}`);
    assert.equal(typeof entry.version, 'string');
    assert.ok(entry.started_ms > 0);
    for (const k of ['sockets', 'guests', 'calls']) assert.equal(typeof entry.load[k], 'number');
    assert.ok(entry.beat > 0);
  }
  // Both keys expire on their own once no node beats any more.
  for (const key of [NODES_KEY, INFO_KEY]) {
    const ttl = await redis.command('PTTL', key);
    assert.ok(ttl > 0 && ttl <= 60_000, `${key} PTTL ${ttl}`);
  }
  // Besides the registry and its data epoch (one short string, kept: its change tells the nodes
  // that Redis lost its data), only the guest's shared session record, which expires with its
  // token, its address's count of guest creations (a one-minute window) and its address's open
  // sessions on the node that made it (published within about a second, expiring unless
  // published again).
  const sessionsOf = 'tandem:{ip:::ffff:127.0.0.1}:s:';
  let keys = [];
  for (let i = 0; i < 50 && !keys.some((k) => k.startsWith(sessionsOf)); i++) {
    if (i > 0) await new Promise((res) => setTimeout(res, 100));
    keys = await redis.command('KEYS', 'tandem:*');
  }
  const sessions = keys.filter((k) => k.startsWith(sessionsOf));
  assert.equal(sessions.length, 1, keys.join(', '));
  assert.equal(String(await redis.command('GET', sessions[0])), '1');
  const sessionsTtl = await redis.command('PTTL', sessions[0]);
  assert.ok(sessionsTtl > 0 && sessionsTtl <= 120_000, `${sessions[0]} PTTL ${sessionsTtl}`);
  const record = `tandem:s:${guest.guest.sessionId}`;
  const creations = 'tandem:ip:127.0.0.1:guests';
  assert.deepEqual(keys.sort(), [INFO_KEY, NODES_KEY, EPOCH_KEY, record, creations, sessions[0]].sort());
  assert.equal(await redis.command('PTTL', EPOCH_KEY), -1, 'the epoch never expires');
  const ttl = await redis.command('PTTL', record);
  assert.ok(ttl > 0 && ttl <= 2 * 3600_000, `${record} PTTL ${ttl}`);
  const window = await redis.command('PTTL', creations);
  assert.ok(window > 0 && window <= 60_000, `${creations} PTTL ${window}`);
  assert.equal(await redis.command('GET', creations), '1');
});

test('a node killed with SIGKILL disappears from the others\' view within 10 s', async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 3);
  await allSee(nodes, 3);
  const victim = nodes[2];
  const victimId = await idOf(redis, victim.name);
  const exited = new Promise((resolve) => victim.proc.once('exit', resolve));
  victim.proc.kill('SIGKILL');
  await exited;
  const killedAt = Date.now();
  await allSee(nodes.slice(0, 2), 2, 10_000);
  const ms = Date.now() - killedAt;
  t.diagnostic(`gone from both views after ${ms} ms`);
  assert.ok(ms < 10_000, `gone after ${ms} ms`);
  assert.equal(await redis.command('ZSCORE', NODES_KEY, victimId), null);
  assert.equal(await redis.command('HEXISTS', INFO_KEY, victimId), 0);
});

test('a node sent SIGTERM leaves the registry first: gone before its guests hear server:shutdown, and before it exits', async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 2, { args: ['--shutdown-grace-secs', '5'] });
  await allSee(nodes, 2);
  const [stays, drains] = nodes;
  const id = await idOf(redis, drains.name);
  const { socket } = await guestSocket(drains.url);
  // The moment the notice arrives, the entry must already be gone (it left before telling).
  const atNotice = waitFor(socket, 'server:shutdown', 5000).then(() => redis.command('ZSCORE', NODES_KEY, id));
  let exitedAt = null;
  const exited = new Promise((resolve) => drains.proc.once('exit', (code, signal) => {
    exitedAt = Date.now();
    resolve({ code, signal });
  }));
  drains.proc.kill('SIGTERM');
  let goneAt = null;
  while (goneAt === null && exitedAt === null) {
    if ((await redis.command('ZSCORE', NODES_KEY, id)) === null) goneAt = Date.now();
    else await sleep(5);
  }
  assert.ok(goneAt !== null, 'the entry was still there when the process exited');
  assert.equal(await atNotice, null, 'still registered when server:shutdown arrived');
  assert.equal(await redis.command('HEXISTS', INFO_KEY, id), 0);
  const { code, signal } = await exited;
  assert.equal(signal, null);
  assert.equal(code, 0, drains.output());
  assert.ok(goneAt <= exitedAt);
  // The other node's view follows at its next heartbeat.
  await allSee([stays], 1, 5000);
});

test('Redis stopped and started again: /readyz 503 with the reason, the node keeps serving, then 200 and registered again', async (t) => {
  const first = await startRedis();
  const port = first.port;
  let current = first;
  t.after(() => current.stop());
  const { nodes } = await clusterFor(t, first, 2);
  await allSee(nodes, 2);
  await first.kill();

  for (const node of nodes) {
    const { value: res } = await until('/readyz 503', async () => {
      const r = await api(node.url, '/readyz');
      return r.status === 503 ? r : null;
    });
    assert.equal(res.body.status, 'not_ready');
    assert.ok(res.body.reasons.some((r) => /^redis is unreachable \(\w+\)$/.test(r)), JSON.stringify(res.body));
    assert.ok(!res.body.reasons.some((r) => r.includes(String(port))), 'no address in /readyz');
    assert.equal(await metric(node.url, 'tandem_redis_up'), 0);
    // Serving on alone: health, new guests, sockets.
    assert.equal((await api(node.url, '/healthz')).status, 200);
    const guest = await createGuest(node.url);
    assert.equal(typeof guest.token, 'string');
  }
  const errors = await errorCount(nodes[0].url);
  assert.ok(errors >= 1, `Redis errors counted: ${errors}`);

  current = await startRedis({ port }); // empty: every entry must be written again
  for (const node of nodes) {
    const { ms } = await until('/readyz 200 again', async () => (await api(node.url, '/readyz')).status === 200);
    t.diagnostic(`${node.name} ready again after ${ms} ms`);
    assert.equal(await metric(node.url, 'tandem_redis_up'), 1);
    assert.ok(await metric(node.url, 'tandem_cluster_rejoins_total') >= 1);
  }
  await allSee(nodes, 2);
  const names = [...(await registry(current)).values()].map((e) => e.name).sort();
  assert.deepEqual(names, nodes.map((n) => n.name).sort());
});

test('a Redis Cluster (three masters): nodes reach it through redis+cluster:// or the flag repeated, and see each other', async (t) => {
  const rc = await redisClusterFor(t, 3);
  const { nodes } = await clusterFor(t, rc, 2, {
    redisArgs: (i) => (i === 0
      ? ['--redis-url', rc.url]
      : rc.ports.flatMap((p) => ['--redis-url', `redis://127.0.0.1:${p}`])),
  });
  await allSee(nodes, 2);
  // Both keys hash to one slot (the script touches both), on the master that owns it.
  const slot = await rc.servers[0].command('CLUSTER', 'KEYSLOT', NODES_KEY);
  assert.equal(await rc.servers[0].command('CLUSTER', 'KEYSLOT', INFO_KEY), slot);
  const owner = rc.owner(slot);
  assert.equal(await owner.command('ZCARD', NODES_KEY), 2);
  const names = [...(await registry(owner)).values()].map((e) => e.name).sort();
  assert.deepEqual(names, nodes.map((n) => n.name).sort());
  for (const node of nodes) assert.equal((await api(node.url, '/readyz')).status, 200);
  // A drained node leaves it too.
  const id = await idOf(owner, nodes[1].name);
  await nodes[1].stop();
  assert.equal(await owner.command('ZSCORE', NODES_KEY, id), null);
  await allSee([nodes[0]], 1, 5000);
});

/** A CA (`ca.pem`) and a server certificate it signed for IP 127.0.0.1 (`srv.pem`, `srv.key`),
 * made with openssl in a temporary directory removed when `t` ends; `other.pem` is an unrelated CA. */
function certificates(t) {
  const dir = mkdtempSync(join(tmpdir(), 'tandem-e2e-tls-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const openssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=tandem e2e CA');
  openssl('req', '-x509', ...ec, '-keyout', 'other.key', '-out', 'other.pem', '-days', '1', '-subj', '/CN=another CA');
  openssl('req', ...ec, '-keyout', 'srv.key', '-out', 'srv.csr', '-subj', '/CN=127.0.0.1');
  writeFileSync(join(dir, 'ext'), 'subjectAltName=IP:127.0.0.1\n');
  openssl('x509', '-req', '-in', 'srv.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'srv.pem', '-days', '1', '-extfile', 'ext');
  return { ca: join(dir, 'ca.pem'), other: join(dir, 'other.pem'), cert: join(dir, 'srv.pem'), key: join(dir, 'srv.key') };
}

test('rediss:// speaks TLS: the server certificate is checked against the trusted roots (SSL_CERT_FILE here)', async (t) => {
  const certs = certificates(t);
  const redis = await redisFor(t, { tls: { cert: certs.cert, key: certs.key } });
  const secrets = ['--jwt-secret', 'j'.repeat(40), '--turn-secret', 't'.repeat(20)];
  // Signed by a CA this node does not trust: refused, and the message says why.
  const untrusted = await runToExit(
    [...(await refusalArgs()), '--redis-url', redis.tlsUrl, ...secrets],
    15_000,
    { SSL_CERT_FILE: certs.other },
  );
  assert.notEqual(untrusted.code, 0, untrusted.output);
  assert.match(untrusted.output, new RegExp(`cannot reach Redis at rediss://127\\.0\\.0\\.1:${redis.tlsPort}/0: .*certificate`, 'i'));
  // Trusted: the node registers over TLS.
  const { nodes } = await clusterFor(t, redis, 1, {
    redisArgs: () => ['--redis-url', redis.tlsUrl],
    env: { SSL_CERT_FILE: certs.ca },
  });
  await allSee(nodes, 1);
  assert.equal((await api(nodes[0].url, '/readyz')).status, 200);
  const names = [...(await registry(redis)).values()].map((e) => e.name);
  assert.deepEqual(names, [nodes[0].name]);
});

test('without --redis-url nothing of the cluster runs: no cluster or Redis metrics', async (t) => {
  const server = await serverFor(t);
  const text = (await api(server.url, '/metrics')).text;
  assert.doesNotMatch(text, /^tandem_(cluster|redis)_/m);
  assert.deepEqual((await api(server.url, '/readyz')).body, { status: 'ready' });
});
