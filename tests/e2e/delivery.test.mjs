// Nothing acknowledged is lost: a chat message to a partner whose connection died silently (no
// FIN: a phone that lost its network) is kept until a socket of the partner acknowledges it, and
// handed out again, under the same id, when the partner reconnects; the sender's
// `chat:message:delivered` comes only after that ack, once.
//
// The partner's network is taken away by dropping every TCP packet to or from its socket's local
// port with nftables. The suite runs in its own network namespace (`unshare -n`, only `lo`; see
// tests/e2e.rs), so the rules touch nothing outside the test. Needs `nft` (Debian `nftables`;
// scripts/test.sh installs it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  serverFor,
  connect,
  waitFor,
  waitForEntry,
  expectNone,
  emitAck,
  assertRefused,
  pair,
  sendText,
  received,
  sleep,
} from './harness.mjs';

function nft(args) {
  try {
    execFileSync('nft', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    if (err.code === 'ENOENT') {
      throw new Error('these tests need nft (Debian: apt-get install nftables; ./scripts/test.sh installs it)');
    }
    throw new Error(`nft ${args.join(' ')} failed: ${err.stderr?.toString() || err.message}`);
  }
}

let tables = 0;

/**
 * Drops every TCP packet to or from local port `port` (both directions cross `lo`'s input hook)
 * until `restore()`, which the test `t` also calls when it ends.
 */
function dropPort(t, port) {
  assert.ok(Number.isInteger(port) && port > 0, `not a port: ${port}`);
  const table = `tandem_e2e_${process.pid}_${++tables}`;
  nft(['add', 'table', 'inet', table]);
  nft(['add', 'chain', 'inet', table, 'in', '{ type filter hook input priority -10 ; policy accept ; }']);
  nft(['add', 'rule', 'inet', table, 'in', 'tcp', 'sport', String(port), 'drop']);
  nft(['add', 'rule', 'inet', table, 'in', 'tcp', 'dport', String(port), 'drop']);
  let on = true;
  const drop = {
    restore() {
      if (!on) return;
      on = false;
      nft(['delete', 'table', 'inet', table]);
    },
  };
  t.after(() => drop.restore());
  return drop;
}

/** The local TCP port of a socket.io-client socket on the WebSocket transport (Node's `ws`). */
function localPort(socket) {
  const port = socket.io.engine?.transport?.ws?._socket?.localPort;
  assert.ok(Number.isInteger(port), 'the socket has no WebSocket transport with a local port');
  return port;
}

const partnerMessages = (s, id) => received(s, 'chat:message', (m) => m.from === 'partner' && (id === undefined || m.id === id));

test('a message to a partner whose network vanished is kept until its new socket acks it: same id, one delivered', async (t) => {
  // Default heartbeat (25 s + 20 s): the server does not notice the dead connection during the test.
  const { url } = await serverFor(t);
  const { a, b, gb, roomId } = await pair(url);
  const drop = dropPort(t, localPort(b));

  const m1 = await sendText(a, 'are you there?');
  const m2 = await sendText(a, 'hello?');
  for (const m of [m1, m2]) await waitFor(a, 'chat:message:sent', 2000, (x) => x.id === m.id);
  await expectNone(a, 'chat:message:delivered', 1500);
  await expectNone(a, 'partner:presence', 0);
  assert.equal(partnerMessages(b).length, 0, 'the dead socket got nothing');

  // The partner's phone is back, on another network: a new socket with the same token, while
  // the old connection still counts as open on the server.
  const reconnectedAt = Date.now();
  const b2 = await connect(url, gb.token);
  const est = await waitFor(b2, 'connection:established');
  assert.equal(est.state, 'in_chat');
  assert.equal(est.room.roomId, roomId);
  const got = [];
  for (let i = 0; i < 2; i++) got.push(await waitFor(b2, 'chat:message', 5000, (m) => m.from === 'partner'));
  assert.deepEqual(got.map((m) => m.id), [m1.id, m2.id], 'the same ids, in order');
  assert.deepEqual(got.map((m) => m.content), ['are you there?', 'hello?']);
  for (const m of got) assert.equal(m.roomId, roomId);
  for (const m of [m1, m2]) {
    const d = await waitForEntry(a, 'chat:message:delivered', 5000, (x) => x.id === m.id);
    t.diagnostic(`delivered ${d.at - reconnectedAt} ms after the partner's new socket connected`);
  }

  // The old connection comes back to life: TCP hands it what it held, it acks, and the sender
  // gets no second receipt.
  drop.restore();
  for (const m of [m1, m2]) await waitFor(b, 'chat:message', 15_000, (x) => x.id === m.id);
  await sleep(500);
  for (const m of [m1, m2]) {
    assert.equal(received(a, 'chat:message:delivered', (x) => x.id === m.id).length, 1, `one receipt for ${m.id}`);
    assert.equal(partnerMessages(b2, m.id).length, 1, 'the new socket got it once');
  }

  // The chat goes on: a new message reaches both sockets, one receipt.
  const m3 = await sendText(a, 'welcome back');
  await waitFor(b2, 'chat:message', 5000, (x) => x.id === m3.id);
  await waitFor(b, 'chat:message', 5000, (x) => x.id === m3.id);
  await waitFor(a, 'chat:message:delivered', 5000, (x) => x.id === m3.id);
  await sleep(300);
  assert.equal(received(a, 'chat:message:delivered', (x) => x.id === m3.id).length, 1);
});

test('the heartbeat notices a silently dead partner; its client reconnects and gets every message it missed', async (t) => {
  const PING = 1;
  const { url } = await serverFor(t, ['--ping-interval-secs', String(PING), '--ping-timeout-secs', String(PING)]);
  // The partner's client reconnects on its own, as the web client does.
  const { a, b, roomId } = await pair(url, {
    b: { reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 200, randomizationFactor: 0 },
  });
  const droppedAt = Date.now();
  const drop = dropPort(t, localPort(b));

  const m1 = await sendText(a, 'sent into the void');
  const away = await waitForEntry(a, 'partner:presence', 2 * (PING + PING) * 1000 + 2000, (p) => p.status === 'away');
  assert.deepEqual(away.payload, { roomId, status: 'away' });
  const detected = away.at - droppedAt;
  t.diagnostic(`the server noticed the dead connection after ${detected} ms (ping interval ${PING} s + timeout ${PING} s)`);
  assert.ok(detected <= (PING + PING) * 1000 + 1000, `noticed after ${detected} ms`);
  assert.equal(received(a, 'chat:message:delivered').length, 0, 'no receipt without an ack');
  const m2 = await sendText(a, 'queued while you are away');

  // The client notices too (no ping from the server), reconnects from a new port, and gets both.
  const first = await waitFor(b, 'chat:message', 10_000, (m) => m.from === 'partner');
  const second = await waitFor(b, 'chat:message', 5000, (m) => m.from === 'partner');
  assert.deepEqual([first.id, second.id], [m1.id, m2.id]);
  assert.deepEqual(await waitFor(a, 'partner:presence', 5000, (p) => p.status === 'online'), { roomId, status: 'online' });
  for (const m of [m1, m2]) await waitFor(a, 'chat:message:delivered', 5000, (x) => x.id === m.id);
  drop.restore();
  await sleep(500);
  for (const m of [m1, m2]) {
    assert.equal(received(a, 'chat:message:delivered', (x) => x.id === m.id).length, 1);
    assert.equal(partnerMessages(b, m.id).length, 1, 'received once');
  }
});

test('unacknowledged messages to a connected but silent partner count against --away-queue-max', async (t) => {
  const { url } = await serverFor(t, ['--away-queue-max', '2']);
  const { a, b, gb } = await pair(url);
  dropPort(t, localPort(b));
  const m1 = await sendText(a, 'one');
  const m2 = await sendText(a, 'two');
  // The partner still looks online, but holds two messages it never acknowledged.
  assertRefused(
    await emitAck(a, 'chat:message', { clientId: 'c3', type: 'text', content: 'three' }),
    'partner_away_queue_full',
  );
  const b2 = await connect(url, gb.token);
  const got = [];
  for (let i = 0; i < 2; i++) got.push(await waitFor(b2, 'chat:message', 5000, (m) => m.from === 'partner'));
  assert.deepEqual(got.map((m) => m.id), [m1.id, m2.id]);
  for (const m of [m1, m2]) await waitFor(a, 'chat:message:delivered', 5000, (x) => x.id === m.id);
  // Acknowledged: there is room again.
  const m3 = await sendText(a, 'three');
  await waitFor(b2, 'chat:message', 5000, (m) => m.id === m3.id);
});
