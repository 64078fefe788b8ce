// The bundled TURN server against coturn's own client tools (Debian package `coturn`):
// turnutils_uclient allocates, binds channels and relays through tandem to a turnutils_peer
// echo server, over UDP, TCP and TLS, with TURN REST credentials (the shared secret, or the
// username/credential tandem mints at GET /api/ice-servers). Also the refusals: peers on
// loopback / link-local (cloud metadata) / private addresses, wrong and expired credentials,
// the per-user allocation quota — each checked in the client's output and in /metrics.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import { serverFor, freePort, freeUdpPort, createGuest, api, sleep } from './harness.mjs';

const UCLIENT = '/usr/bin/turnutils_uclient';
const PEER = '/usr/bin/turnutils_peer';
const SECRET = 'turn-e2e-secret-0123456789abcdef';

let peer = null;
let peerPort = 0;

before(async () => {
  assert.ok(
    existsSync(UCLIENT) && existsSync(PEER),
    'coturn client tools are missing: apt-get install coturn (./scripts/test.sh does so as root)',
  );
  peerPort = await freeUdpPort();
  peer = spawn(PEER, ['-L', '127.0.0.1', '-p', String(peerPort)], { stdio: 'ignore' });
  await sleep(300);
  assert.equal(peer.exitCode, null, 'turnutils_peer started');
});

after(() => {
  if (peer && peer.exitCode === null) process.kill(peer.pid, 'SIGKILL');
});

/** Runs turnutils_uclient to completion (killed by PID after `ms`); resolves with its output. */
function uclient(args, ms = 60_000) {
  return new Promise((resolve) => {
    const proc = spawn(UCLIENT, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout.on('data', (c) => (out += c));
    proc.stderr.on('data', (c) => (out += c));
    const killer = setTimeout(() => process.kill(proc.pid, 'SIGKILL'), ms);
    proc.once('exit', (code) => {
      clearTimeout(killer);
      resolve({ code, out });
    });
  });
}

/** The totals turnutils_uclient prints at the end of a run. */
function totals(out) {
  // Progress lines come first; the last one is the final count.
  const sent = [...out.matchAll(/tot_send_msgs=(\d+), tot_recv_msgs=(\d+)/g)].at(-1);
  const lost = /Total lost packets (\d+)/.exec(out);
  return {
    sent: sent ? Number(sent[1]) : 0,
    received: sent ? Number(sent[2]) : 0,
    lost: lost ? Number(lost[1]) : null,
  };
}

async function scrape(url) {
  const res = await api(url, '/metrics');
  const values = new Map();
  for (const line of res.text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    values.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return values;
}

/** Waits for a metric to reach `min` (metrics are exported once per second). */
async function metricAtLeast(url, key, min) {
  let v = 0;
  for (let i = 0; i < 40; i++) {
    v = (await scrape(url)).get(key) ?? 0;
    if (v >= min) return v;
    await sleep(250);
  }
  assert.fail(`${key} stayed at ${v}, expected at least ${min}`);
}

async function turnServer(t, extra = []) {
  const turnPort = await freePort();
  const tlsPort = await freePort();
  const server = await serverFor(t, [
    '--turn-port', String(turnPort),
    '--turn-tls-port', String(tlsPort),
    '--turn-secret', SECRET,
    '--turn-relay-ports', '20000-20999',
    ...extra,
  ]);
  return { server, turnPort, tlsPort };
}

const MESSAGES = 200;
const CLIENTS = 2;

for (const [name, flags, tls] of [
  ['UDP', [], false],
  ['UDP with Send/Data indications', ['-s'], false],
  ['TCP', ['-t'], false],
  ['TLS', ['-t', '-S'], true],
]) {
  test(`turnutils_uclient relays through tandem over ${name} with REST credentials, no loss`, async (t) => {
    const { server, turnPort, tlsPort } = await turnServer(t, ['--turn-allow-loopback-peers']);
    const r = await uclient([
      ...flags, '-c', '-W', SECRET, '-u', `user${turnPort}`,
      '-e', '127.0.0.1', '-r', String(peerPort),
      '-n', String(MESSAGES), '-m', String(CLIENTS), '-l', '172',
      '-p', String(tls ? tlsPort : turnPort), '127.0.0.1',
    ]);
    const tot = totals(r.out);
    assert.equal(tot.sent, MESSAGES * CLIENTS, `all messages sent:\n${r.out.slice(-2000)}`);
    assert.equal(tot.received, tot.sent, `every message came back:\n${r.out.slice(-2000)}`);
    assert.equal(tot.lost, 0);
    const transport = tls ? 'tls' : flags.includes('-t') ? 'tcp' : 'udp';
    const framing = flags.includes('-s') ? 'indication' : 'channel_data';
    await metricAtLeast(
      server.url,
      `tandem_turn_relayed_packets_total{direction="client_to_peer",framing="${framing}",transport="${transport}"}`,
      tot.sent,
    );
    await metricAtLeast(server.url, 'tandem_turn_allocations_total{event="created"}', CLIENTS);
  });
}

test('GET /api/ice-servers hands out turn: and turns: URLs whose credentials work with coturn\'s client', async (t) => {
  const { server, turnPort, tlsPort } = await turnServer(t, ['--turn-allow-loopback-peers']);
  const guest = await createGuest(server.url);
  const res = await api(server.url, '/api/ice-servers', { token: guest.token });
  assert.equal(res.status, 200);
  const { iceServers, ttl } = res.body;
  assert.equal(ttl, 3600);
  assert.equal(iceServers.length, 1);
  const [entry] = iceServers;
  assert.deepEqual(entry.urls, [
    `turn:127.0.0.1:${turnPort}?transport=udp`,
    `turn:127.0.0.1:${turnPort}?transport=tcp`,
    `turns:127.0.0.1:${tlsPort}?transport=tcp`,
  ]);
  const [expiry, session] = entry.username.split(':');
  assert.equal(session, guest.sessionId, 'the username names the guest');
  const now = Math.floor(Date.now() / 1000);
  assert.ok(Number(expiry) > now + 3500 && Number(expiry) <= now + 3601, 'valid for the TTL');
  const expected = createHmac('sha1', SECRET).update(entry.username).digest('base64');
  assert.equal(entry.credential, expected, 'coturn-style REST credential');

  const r = await uclient([
    '-c', '-u', entry.username, '-w', entry.credential,
    '-e', '127.0.0.1', '-r', String(peerPort), '-n', '50', '-m', '1', '-l', '120',
    '-p', String(turnPort), '127.0.0.1',
  ]);
  const tot = totals(r.out);
  assert.equal(tot.sent, 50, r.out.slice(-2000));
  assert.equal(tot.received, 50, r.out.slice(-2000));
});

test('by default TURN refuses loopback, cloud-metadata and private peers (403), and counts them', async (t) => {
  // The harness runs tandem with --node-ip 127.0.0.1: its media port on loopback is always a
  // permitted peer, but no other loopback port (here the echo peer's) may be reached.
  const { server, turnPort } = await turnServer(t);
  for (const addr of ['127.0.0.1', '169.254.169.254', '10.0.0.1']) {
    const r = await uclient([
      '-c', '-W', SECRET, '-u', 'deny', '-e', addr, '-r', String(peerPort),
      '-n', '5', '-m', '1', '-l', '100', '-p', String(turnPort), '127.0.0.1',
    ], 30_000);
    assert.match(r.out, /403/, `a 403 for peer ${addr}:\n${r.out.slice(-2000)}`);
    assert.equal(totals(r.out).received, 0, `nothing came back from ${addr}`);
  }
  // The IPv4-mapped form of loopback: uclient asks for an IPv6 relay for an IPv6 peer, which this
  // IPv4 node refuses (440) before the peer filter, which refuses the form too (turn/tests/filter.rs).
  const mapped = await uclient([
    '-c', '-W', SECRET, '-u', 'deny', '-e', '::ffff:127.0.0.1', '-r', String(peerPort),
    '-n', '5', '-m', '1', '-l', '100', '-p', String(turnPort), '127.0.0.1',
  ], 30_000);
  assert.match(mapped.out, /\b(403|440|443)\b/, `::ffff:127.0.0.1 refused:\n${mapped.out.slice(-2000)}`);
  assert.equal(totals(mapped.out).received, 0);
  await metricAtLeast(server.url, 'tandem_turn_peers_denied_total', 3);
  const m = await scrape(server.url);
  for (const [k, v] of m) {
    if (k.startsWith('tandem_turn_relayed_packets_total{direction="client_to_peer"')) assert.equal(v, 0, k);
  }
});

test('wrong and expired credentials are refused (401) and counted', async (t) => {
  const { server, turnPort } = await turnServer(t, ['--turn-allow-loopback-peers']);
  const wrong = await uclient([
    '-c', '-W', 'not-the-secret-at-all-000', '-u', 'mallory', '-e', '127.0.0.1', '-r', String(peerPort),
    '-n', '5', '-m', '1', '-p', String(turnPort), '127.0.0.1',
  ], 30_000);
  assert.equal(totals(wrong.out).received, 0, wrong.out.slice(-2000));
  await metricAtLeast(server.url, 'tandem_turn_auth_failures_total{reason="bad_integrity"}', 1);

  const username = `${Math.floor(Date.now() / 1000) - 60}:expired`;
  const password = createHmac('sha1', SECRET).update(username).digest('base64');
  const expired = await uclient([
    '-c', '-u', username, '-w', password, '-e', '127.0.0.1', '-r', String(peerPort),
    '-n', '5', '-m', '1', '-p', String(turnPort), '127.0.0.1',
  ], 30_000);
  assert.equal(totals(expired.out).received, 0, expired.out.slice(-2000));
  await metricAtLeast(server.url, 'tandem_turn_auth_failures_total{reason="unknown_user"}', 1);
});

test('the per-user allocation quota is enforced (486)', async (t) => {
  const { server, turnPort } = await turnServer(t, [
    '--turn-allow-loopback-peers', '--turn-max-allocations-per-user', '2',
  ]);
  const r = await uclient([
    '-c', '-W', SECRET, '-u', 'greedy', '-e', '127.0.0.1', '-r', String(peerPort),
    '-n', '5', '-m', '3', '-p', String(turnPort), '127.0.0.1',
  ], 30_000);
  assert.match(r.out, /486/, r.out.slice(-2000));
  await metricAtLeast(server.url, 'tandem_turn_quota_refusals_total{quota="user"}', 1);
});
