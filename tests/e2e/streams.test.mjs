// The TCP media paths against an attacker with a TCP socket (issue 13, "No cheap exhaustion"):
// ICE-TCP (RFC 4571 framing) and TURN over TCP and TLS close streams that stall inside a frame,
// idle streams, frames longer than the largest legal one, and TLS handshakes that never finish;
// they cap streams per client address; and a real TURN-TLS client is served while hostile
// handshakes are pending (the handshakes run off the relay threads).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { serverFor, freePort, freeUdpPort, api, sleep, rawConn, within } from './harness.mjs';

async function metric(url, re) {
  const text = (await api(url, '/metrics')).text;
  const m = re.exec(text);
  return m ? Number(m[1]) : 0;
}

/** A STUN header (Binding request) announcing `len` bytes of attributes. */
function stunHeader(len) {
  const b = Buffer.alloc(20);
  b.writeUInt16BE(0x0001, 0);
  b.writeUInt16BE(len, 2);
  b.writeUInt32BE(0x2112a442, 4);
  return b;
}

async function streamServer(t, extra = []) {
  const icePort = await freePort();
  const turnPort = await freePort();
  const tlsPort = await freePort();
  const server = await serverFor(t, [
    '--rtc-tcp-port', String(icePort), '--turn-port', String(turnPort), '--turn-tls-port', String(tlsPort),
    '--turn-secret', 'streams-e2e-secret-0123456789abc', ...extra,
  ]);
  return { server, icePort, turnPort, tlsPort };
}

test('ICE-TCP and TURN TCP/TLS streams are capped per client address', async (t) => {
  const { server, icePort, turnPort } = await streamServer(t, ['--max-stream-connections-per-ip', '3']);
  const all = [];
  t.after(() => all.forEach((c) => c.sock.destroy()));
  for (const [name, port] of [['ice_tcp', icePort], ['turn', turnPort]]) {
    const held = [];
    for (let i = 0; i < 3; i++) held.push(await rawConn(port));
    all.push(...held);
    const extra = await rawConn(port);
    all.push(extra);
    assert.ok(await within(extra.closed, 3000), `${name}: stream 4 was kept`);
    assert.ok(held.every((c) => !c.isClosed()), `${name}: the first 3 stay`);
    const refused = await metric(server.url, new RegExp(`tandem_connections_refused_total\\{listener="${name}",reason="per_ip"\\} (\\d+)`));
    assert.ok(refused >= 1, `${name}: refusal counted`);
    for (const c of held) c.sock.destroy();
  }
  // TURN's TCP and TLS ports share one count per address (a fresh server: the streams above
  // are released as soon as the server notices them gone, which a busy box may take a while).
  const shared = await streamServer(t, ['--max-stream-connections-per-ip', '3']);
  const tcp = [];
  for (let i = 0; i < 3; i++) tcp.push(await rawConn(shared.turnPort));
  all.push(...tcp);
  // The TCP and TLS ports are accepted by separate loops: before the TLS stream comes, make
  // sure the server has taken the three TCP streams (each answers a Binding), or on a busy box
  // the TLS stream could be accepted first and a TCP one refused instead.
  for (const c of tcp) {
    c.sock.write(stunHeader(0));
    for (let i = 0; i < 100 && c.data().length === 0; i++) await sleep(50);
    assert.ok(c.data().length > 0, 'a TCP stream was answered');
  }
  const tls = await rawConn(shared.tlsPort);
  all.push(tls);
  assert.ok(await within(tls.closed, 3000), 'a TLS stream past the shared cap was kept');
  assert.ok(tcp.every((c) => !c.isClosed()), 'the three TCP streams stay');
});

test('stalled, idle and oversized streams are closed on every TCP media path', async (t) => {
  const { icePort, turnPort, tlsPort } = await streamServer(t);
  const cases = [];
  const open = async (port) => { const c = await rawConn(port); t.after(() => c.sock.destroy()); return c; };
  // ICE-TCP: a length above the largest frame (1500) closes at once.
  const big = await open(icePort);
  big.sock.write(Buffer.from([0x07, 0xd0]));
  cases.push(['ICE-TCP frame of 2000 bytes', big.closed, 3000]);
  // ICE-TCP: a frame whose bytes never come (10 s), and a silent stream (10 s for the first frame).
  const stalled = await open(icePort);
  stalled.sock.write(Buffer.concat([Buffer.from([0x00, 0x64]), Buffer.alloc(10)]));
  cases.push(['ICE-TCP frame stalled halfway', stalled.closed, 16000]);
  const silent = await open(icePort);
  cases.push(['ICE-TCP stream that never sends', silent.closed, 16000]);
  // TURN over TCP: a message whose rest never comes (10 s from its first byte, however slowly
  // bytes trickle in), and a stream without an allocation that goes quiet (30 s).
  const partial = await open(turnPort);
  partial.sock.write(stunHeader(100));
  const trickle = setInterval(() => { if (!partial.isClosed()) partial.sock.write(Buffer.alloc(1)); }, 2000);
  t.after(() => clearInterval(trickle));
  cases.push(['TURN TCP message trickled byte by byte', partial.closed, 16000]);
  const idle = await open(turnPort);
  cases.push(['TURN TCP stream that never sends', idle.closed, 40000]);
  // TURN over TLS: a handshake that never starts (10 s).
  const hello = await open(tlsPort);
  cases.push(['TURN TLS handshake that never comes', hello.closed, 16000]);
  const results = await Promise.all(cases.map(async ([name, closed, ms]) => [name, await within(closed, ms)]));
  for (const [name, ok] of results) assert.ok(ok, `${name}: not closed`);
});

test('a TURN-TLS client is served while hostile handshakes are pending', async (t) => {
  const { server, tlsPort } = await streamServer(t, ['--turn-allow-loopback-peers']);
  // Twenty connections that never finish their handshake.
  const pending = [];
  for (let i = 0; i < 20; i++) {
    const c = await rawConn(tlsPort);
    c.sock.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00])); // a ClientHello header, then nothing
    pending.push(c);
  }
  t.after(() => pending.forEach((c) => c.sock.destroy()));
  // coturn's client relays through TLS to an echo peer meanwhile.
  const peerPort = await freeUdpPort();
  const peer = spawn('/usr/bin/turnutils_peer', ['-L', '127.0.0.1', '-p', String(peerPort)], { stdio: 'ignore' });
  t.after(() => { if (peer.exitCode === null) process.kill(peer.pid, 'SIGKILL'); });
  await sleep(300);
  const out = await new Promise((resolve) => {
    const proc = spawn('/usr/bin/turnutils_uclient', [
      '-t', '-S', '-c', '-W', 'streams-e2e-secret-0123456789abc', '-u', 'tls', '-e', '127.0.0.1',
      '-r', String(peerPort), '-n', '20', '-m', '1', '-p', String(tlsPort), '127.0.0.1',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    proc.stdout.on('data', (c) => (text += c));
    proc.stderr.on('data', (c) => (text += c));
    const killer = setTimeout(() => process.kill(proc.pid, 'SIGKILL'), 30_000);
    proc.once('exit', () => { clearTimeout(killer); resolve(text); });
  });
  const m = [...out.matchAll(/tot_send_msgs=(\d+), tot_recv_msgs=(\d+)/g)].at(-1);
  assert.ok(m && Number(m[1]) === 20 && Number(m[2]) === 20, out.slice(-2000));
  assert.ok(pending.every((c) => !c.isClosed()), 'the pending handshakes are still within their deadline');
  assert.equal((await api(server.url, '/healthz')).status, 200);
});
