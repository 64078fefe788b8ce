// The bundled TURN server against coturn's own client tools (Debian package `coturn`):
// turnutils_uclient allocates, binds channels and relays through tandem to a turnutils_peer
// echo server, over UDP, TCP and TLS, with TURN REST credentials (the shared secret, or the
// username/credential tandem mints at GET /api/ice-servers). Also the refusals: peers on
// loopback / link-local (cloud metadata) / private addresses, wrong and expired credentials,
// the per-user allocation quota — each checked in the client's output and in /metrics.
// The open-internet defences: no open relay by default (public addresses, the host's other
// ports and other relay ports are 403; only the media address is a peer), credentials only for
// a guest in a call, the byte rate per allocation, the per-guest quota across TURN threads, the
// rate limit on unauthenticated answers, and EVEN-PORT with the reservation bit.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { existsSync } from 'node:fs';
import {
  runProgram,
  serverFor, freePort, freeUdpPort, createGuest, api, sleep, pair, emitAck, assertOk, waitFor,
  assertHttpError, processStats,
} from './harness.mjs';

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
  return runProgram(UCLIENT, args, ms);
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
  // Credentials only for a guest in a call: not before, nor for a guest without a chat.
  const loner = await createGuest(server.url);
  assertHttpError(await api(server.url, '/api/ice-servers', { token: loner.token }), 409, 'no_call');
  const { a, b, ga: guest, gb } = await pair(server.url);
  t.after(() => { a.close(); b.close(); });
  assertHttpError(await api(server.url, '/api/ice-servers', { token: guest.token }), 409, 'no_call');
  assertOk(await emitAck(a, 'call:request', { video: false }), 'call:request');
  await waitFor(b, 'call:incoming');
  // Ringing: both guests get credentials, each naming itself and the call.
  const callee = await api(server.url, '/api/ice-servers', { token: gb.token });
  assert.equal(callee.status, 200);
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
  const [expiry, session, call] = entry.username.split(':');
  assert.equal(session, guest.sessionId, 'the username names the guest');
  assert.match(call, /^\d+$/, 'and the call');
  assert.equal(callee.body.iceServers[0].username.split(':')[2], call, 'the same call for both');
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

test('by default TURN is no open relay: public, private, metadata and the host\'s own addresses and ports are 403', async (t) => {
  // The harness runs tandem with --node-ip 127.0.0.1: its media port on loopback is the one
  // permitted peer; no other port of the host (the echo peer's, a relay port, the HTTP port)
  // and no other address (public ones included) may be reached.
  const { server, turnPort } = await turnServer(t);
  const refused = [
    ['127.0.0.1', peerPort],
    ['127.0.0.1', 20001], // another relay port of this TURN server
    ['127.0.0.1', server.port], // the host's HTTP port
    ['8.8.8.8', 53], // a public address: only refused, nothing is ever sent to it
    ['169.254.169.254', 80],
    ['10.0.0.1', peerPort],
  ];
  for (const [i, [addr, port]] of refused.entries()) {
    // A user each: a client that gives up leaves its allocation until it expires, which the
    // per-user quota counts.
    const r = await uclient([
      '-c', '-W', SECRET, '-u', `deny${i}`, '-e', addr, '-r', String(port),
      '-n', '5', '-m', '1', '-l', '100', '-p', String(turnPort), '127.0.0.1',
    ], 30_000);
    assert.match(r.out, /403/, `a 403 for peer ${addr}:${port}:\n${r.out.slice(-2000)}`);
    assert.equal(totals(r.out).received, 0, `nothing came back from ${addr}:${port}`);
  }
  await metricAtLeast(server.url, 'tandem_turn_peers_denied_total', refused.length);
  const m = await scrape(server.url);
  for (const [k, v] of m) {
    if (k.startsWith('tandem_turn_relayed_packets_total{direction="client_to_peer"')) assert.equal(v, 0, k);
  }
});

test('on a dual-stack relay the IPv4-mapped form of loopback reaches the peer filter and gets 403', async (t) => {
  // With an IPv6 relay address the IPv6 allocation succeeds, so the refusal can only come from
  // the peer filter (not 440 for a missing family).
  const { server, turnPort } = await turnServer(t, ['--turn-relay-ip', '127.0.0.1', '--turn-relay-ip', '::1']);
  const mapped = await uclient([
    '-c', '-x', '-W', SECRET, '-u', 'deny', '-e', '::ffff:127.0.0.1', '-r', String(peerPort),
    '-n', '5', '-m', '1', '-l', '100', '-p', String(turnPort), '127.0.0.1',
  ], 30_000);
  assert.match(mapped.out, /\b403\b/, `::ffff:127.0.0.1 refused by the filter:\n${mapped.out.slice(-2000)}`);
  assert.doesNotMatch(mapped.out, /\b440\b/, 'the IPv6 allocation itself succeeded');
  assert.equal(totals(mapped.out).received, 0);
  await metricAtLeast(server.url, 'tandem_turn_allocations_total{event="created"}', 1);
  await metricAtLeast(server.url, 'tandem_turn_peers_denied_total', 1);
});

test('the byte rate per allocation holds over the wire (and 5 Mbit/s is the default)', async (t) => {
  // 1000-byte messages every 2 ms (~4 Mbit/s each way, echoed back) against 40 kB/s: most are
  // dropped at the relay, and counted.
  const { server, turnPort } = await turnServer(t, [
    '--turn-allow-loopback-peers', '--turn-max-bytes-per-sec', '40000',
  ]);
  const r = await uclient([
    '-c', '-W', SECRET, '-u', 'rate', '-e', '127.0.0.1', '-r', String(peerPort),
    '-n', '200', '-m', '1', '-l', '1000', '-z', '2', '-p', String(turnPort), '127.0.0.1',
  ]);
  const tot = totals(r.out);
  assert.equal(tot.sent, 200, r.out.slice(-2000));
  assert.ok(tot.received < tot.sent / 2, `the relay kept to its rate: ${JSON.stringify(tot)}`);
  await metricAtLeast(server.url, 'tandem_turn_dropped_total{reason="rate_limited"}', 50);
  // The default: above 5 Mbit/s (8000-byte messages every millisecond, 64 Mbit/s offered)
  // the relay drops; an unlimited relay would echo nearly all of it on loopback.
  const { server: dflt, turnPort: dport } = await turnServer(t, ['--turn-allow-loopback-peers']);
  const d = await uclient([
    '-c', '-W', SECRET, '-u', 'rate', '-e', '127.0.0.1', '-r', String(peerPort),
    '-n', '600', '-m', '1', '-l', '8000', '-z', '1', '-p', String(dport), '127.0.0.1',
  ]);
  const dt = totals(d.out);
  assert.equal(dt.sent, 600, d.out.slice(-2000));
  assert.ok(dt.received < dt.sent * 0.8, `the default rate held: ${JSON.stringify(dt)}`);
  await metricAtLeast(dflt.url, 'tandem_turn_dropped_total{reason="rate_limited"}', 1);
});

/** A STUN Binding request (no attributes). */
function bindingRequest() {
  const b = Buffer.alloc(20);
  b.writeUInt16BE(0x0001, 0);
  b.writeUInt16BE(0, 2);
  b.writeUInt32BE(0x2112a442, 4);
  randomBytes(12).copy(b, 8);
  return b;
}

test('unauthenticated answers are rate limited per source address (no reflection at a spoofed victim)', async (t) => {
  const { server, turnPort } = await turnServer(t);
  const sock = dgram.createSocket('udp4');
  t.after(() => sock.close());
  let answers = 0;
  sock.on('message', () => { answers += 1; });
  await new Promise((resolve) => sock.bind(0, '127.0.0.1', resolve));
  for (let i = 0; i < 300; i++) sock.send(bindingRequest(), turnPort, '127.0.0.1');
  await sleep(1000);
  // A burst of 40 plus 20/s while the 300 went out: far fewer than 300 answers.
  assert.ok(answers >= 20 && answers <= 80, `answers to 300 Binding requests: ${answers}`);
  await metricAtLeast(server.url, 'tandem_turn_dropped_total{reason="unauthenticated_rate"}', 200);
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

test('relay sockets close with their allocations: TCP clients that leave leave no descriptor behind', async (t) => {
  const { server, turnPort } = await turnServer(t, [
    '--turn-allow-loopback-peers', '--turn-max-allocations-per-user', '20',
  ]);
  const before = processStats(server.pid).fds;
  // Ten TCP clients, each with an allocation (a relay socket) and peer traffic; when each
  // connection closes, its allocation ends and the relay socket must be closed with it, even
  // though no datagram will ever arrive on it again.
  const CLIENTS = 10;
  const r = await uclient([
    '-t', '-c', '-W', SECRET, '-u', 'leaver', '-e', '127.0.0.1', '-r', String(peerPort),
    '-n', '20', '-m', String(CLIENTS), '-p', String(turnPort), '127.0.0.1',
  ]);
  const tot = totals(r.out);
  assert.equal(tot.sent, 20 * CLIENTS, r.out.slice(-2000));
  await metricAtLeast(server.url, 'tandem_turn_allocations_total{event="created"}', CLIENTS);
  let fds = 0;
  for (let i = 0; i < 40; i++) {
    fds = processStats(server.pid).fds;
    if (fds <= before) break;
    await sleep(250);
  }
  assert.ok(fds <= before, `descriptors: ${before} before the clients, ${fds} after they left`);
  // The core's table is exported once per second.
  const key = 'tandem_core_entries{core="turn",table="allocations"}';
  let left = -1;
  for (let i = 0; i < 20 && left !== 0; i++) {
    left = (await scrape(server.url)).get(key);
    if (left !== 0) await sleep(250);
  }
  assert.equal(left, 0, 'allocations left in the core');
});

test('the per-guest allocation quota holds across TURN threads (486)', async (t) => {
  const { server, turnPort } = await turnServer(t, [
    '--turn-allow-loopback-peers', '--turn-max-allocations-per-user', '2', '--turn-udp-workers', '3',
  ]);
  // Six clients of one user from six source ports: the kernel spreads them over the three
  // threads, yet only two allocations may exist.
  const r = await uclient([
    '-c', '-W', SECRET, '-u', 'greedy', '-e', '127.0.0.1', '-r', String(peerPort),
    '-n', '5', '-m', '6', '-p', String(turnPort), '127.0.0.1',
  ], 30_000);
  assert.match(r.out, /486/, r.out.slice(-2000));
  await metricAtLeast(server.url, 'tandem_turn_quota_refusals_total{quota="user"}', 1);
  const created = (await scrape(server.url)).get('tandem_turn_allocations_total{event="created"}') ?? 0;
  assert.ok(created <= 2, `allocations made for one user: ${created}`);
});

test('EVEN-PORT with the reservation bit is 508 (reservations are not kept); without it an even port is served', async (t) => {
  const { turnPort } = await turnServer(t, ['--turn-allow-loopback-peers']);
  // Without -c, turnutils_uclient asks for an RTP/RTCP pair: EVEN-PORT with R=1.
  const pairReq = await uclient([
    '-W', SECRET, '-u', 'rtp', '-e', '127.0.0.1', '-r', String(peerPort),
    '-n', '5', '-m', '1', '-p', String(turnPort), '127.0.0.1',
  ], 30_000);
  assert.match(pairReq.out, /508/, pairReq.out.slice(-2000));
  assert.equal(totals(pairReq.out).received, 0);
});
