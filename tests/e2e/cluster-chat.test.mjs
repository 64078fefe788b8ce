// Chat across nodes sharing one Redis (--redis-url): what a guest sees must be exactly what it
// sees on one node (docs/protocol.md), wherever its HTTP requests and sockets land
// (docs/cluster.md). Guests on different nodes are paired and chat (receipts, typing and its
// server-side expiry, leave, 50 messages each way in order); a token minted on one node works on
// every other (socket, refresh, the connect timeout); a guest moves to a third node within the
// grace period and gets what it missed; 300 guests on three nodes searching at once are all
// paired, each exactly once and mutually; Redis stopped mid-chat: a same-node chat goes on, a
// cross-node message is refused with `service_unavailable` (never accepted and then lost), and
// after Redis is back messages and new cross-node matches flow again; a home node killed or
// drained: the partner's node takes the room over and the chat goes on through another node (or
// ends `disconnected` after the grace period); Redis restarted empty: every node writes its
// guests, chats, searches and files again. Each test starts its own
// redis-server and nodes on free loopback ports and stops them by PID (harness *For(t, …)).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  api, assertOk, assertRefused, assertRefusedConnect, clusterFor, connect, createGuest,
  expectNone, received, redisFor, sleep, startRedis, uname, waitFor, waitForEntry,
  ackOf, expectEvent,
} from './harness.mjs';
import { png } from './fixtures.mjs';

const HEX = /^[0-9a-f]+$/;
// Every wait for an event that crosses nodes (a bus hop or two on loopback: milliseconds when
// it works; this only bounds how long a failing test hangs).
const WAIT = 10_000;

/** Polls `probe` until it returns a truthy value; resolves with it and the time taken. */
async function until(what, probe, timeoutMs = WAIT, everyMs = 100) {
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

/** Runs `fn` over `items`, at most `size` at a time; resolves with the results in order. */
async function inBatches(items, size, fn) {
  const out = [];
  for (let i = 0; i < items.length; i += size) {
    out.push(...await Promise.all(items.slice(i, i + size).map((item, j) => fn(item, i + j))));
  }
  return out;
}

/** A guest created by POST /api/guest on `node` and connected there (connection:established, online). */
async function guestOn(node, prefix = 'g', opts = {}) {
  const guest = await createGuest(node.url, uname(prefix));
  const socket = await connect(node.url, guest.token, { timeoutMs: WAIT, ...opts });
  const established = await expectEvent(`${guest.username} on ${node.name}`, socket, 'connection:established');
  assert.equal(established.sessionId, guest.sessionId, `connection:established on ${node.name}: wrong sessionId`);
  assert.equal(established.state, 'online', `a new guest on ${node.name} must be online: ${JSON.stringify(established)}`);
  return { guest, socket, established, node, name: guest.username };
}

/**
 * A on `nodeA` starts searching, then B on `nodeB`; both must get match:found with the same
 * roomId, each naming the other. `opts.a` / `opts.b` go to connect (e.g. `{ autoAck: false }`).
 */
async function pairAcross(nodeA, nodeB, opts = {}) {
  const A = await guestOn(nodeA, 'A', opts.a);
  const B = await guestOn(nodeB, 'B', opts.b);
  const ackA = assertOk(await ackOf(A.socket, 'match:start', {}), `match:start of A on ${nodeA.name}`);
  assert.equal(ackA.state, 'searching', `match:start of A (alone in the queue): ${JSON.stringify(ackA)}`);
  await expectEvent(`A on ${nodeA.name}`, A.socket, 'match:searching');
  const ackB = assertOk(await ackOf(B.socket, 'match:start', {}), `match:start of B on ${nodeB.name}`);
  assert.ok(['searching', 'in_chat'].includes(ackB.state), `match:start of B: state ${JSON.stringify(ackB)}`);
  const where = `A (${A.name}) on ${nodeA.name} and B (${B.name}) on ${nodeB.name} both searching, alone in the cluster's queue`;
  const [ra, rb] = await Promise.allSettled([
    waitFor(A.socket, 'match:found', WAIT),
    waitFor(B.socket, 'match:found', WAIT),
  ]);
  if (ra.status === 'rejected' || rb.status === 'rejected') {
    const say = (who, r) => (r.status === 'fulfilled' ? `${who} got match:found ${JSON.stringify(r.value)}` : `${who} got none (${r.reason.message})`);
    throw new Error(`${where}: not paired within ${WAIT} ms: ${say('A', ra)}; ${say('B', rb)}`);
  }
  const [fa, fb] = [ra.value, rb.value];
  assert.equal(typeof fa.roomId, 'string', `match:found roomId: ${JSON.stringify(fa)}`);
  assert.match(fa.roomId, HEX);
  assert.equal(fa.roomId, fb.roomId, `A and B must get the same roomId: ${JSON.stringify(fa)} vs ${JSON.stringify(fb)}`);
  assert.equal(fa.partner?.username, B.name, `A's partner must be B: ${JSON.stringify(fa)}`);
  assert.equal(fb.partner?.username, A.name, `B's partner must be A: ${JSON.stringify(fb)}`);
  return { A, B, roomId: fa.roomId };
}

/**
 * Calls `attempt` (an ack-returning emit) every `everyMs` until its ack is ok, and resolves with
 * that ack. Meanwhile only `service_unavailable` refusals are accepted: any other refusal fails
 * at once.
 */
async function retryWhileUnavailable(what, attempt, timeoutMs = 15_000, everyMs = 500) {
  const started = Date.now();
  let last;
  for (;;) {
    last = await attempt();
    if (last && last.ok === true) return { value: last, ms: Date.now() - started };
    assertRefused(last, 'service_unavailable', `${what} (a refusal while Redis comes back)`);
    if (Date.now() - started > timeoutMs) {
      throw new Error(`${what}: still refused after ${timeoutMs} ms (last: ${JSON.stringify(last)})`);
    }
    await sleep(everyMs);
  }
}

/**
 * A redis-server that a test kills and starts again, empty, on the same port (`restart()`,
 * resolving with the new one). At the end the nodes stop first (they leave the registry while
 * some Redis is there), then the Redis running then.
 */
async function restartableRedis(t) {
  const first = await startRedis();
  let current = first;
  t.after(async () => {
    await Promise.all(first.nodes.map((node) => node.stop()));
    await current.stop();
  });
  return {
    first,
    async restart() {
      await current.kill();
      current = await startRedis({ port: first.port });
      return current;
    },
  };
}

/** Waits until every node's /readyz answers `status`. */
async function allReady(nodes, status, timeoutMs = WAIT) {
  await Promise.all(nodes.map((node) => until(
    `${node.name} /readyz ${status}`,
    async () => (await api(node.url, '/readyz')).status === status,
    timeoutMs,
  )));
}

test('guests on two nodes are paired and chat as on one node: receipts, typing and its expiry, leave', { timeout: 90_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 3);
  // B acknowledges by hand, to see that the delivered receipt follows B's ack.
  const { A, B, roomId } = await pairAcross(nodes[0], nodes[1], { b: { autoAck: false } });
  const a = A.socket;
  const b = B.socket;

  // A → B: the ack, chat:message:sent, the message, and delivered only after B's ack.
  const before = Date.now();
  const ack = assertOk(
    await ackOf(a, 'chat:message', { clientId: 'across-1', type: 'text', content: '  hello across nodes  ' }),
    'chat:message from A (node-1) to B (node-2)',
  );
  assert.equal(typeof ack.id, 'string', `ack id: ${JSON.stringify(ack)}`);
  assert.match(ack.id, HEX);
  assert.equal(typeof ack.timestamp, 'number', `ack timestamp: ${JSON.stringify(ack)}`);
  assert.ok(Math.abs(ack.timestamp - before) < 60_000, `timestamp ${ack.timestamp} is not ms since the epoch`);
  assert.deepEqual(
    await expectEvent('A (sender)', a, 'chat:message:sent'),
    { clientId: 'across-1', id: ack.id, timestamp: ack.timestamp },
    'chat:message:sent to the sender',
  );
  const entry = await waitForEntry(b, 'chat:message', WAIT, (m) => m.from === 'partner')
    .catch((err) => { throw new Error(`B on node-2 never got A's message: ${err.message}`); });
  assert.deepEqual(entry.payload, {
    id: ack.id, roomId, type: 'text', content: 'hello across nodes', timestamp: ack.timestamp, from: 'partner',
  }, 'the message as B receives it');
  const cb = entry.args[entry.args.length - 1];
  assert.equal(typeof cb, 'function', 'chat:message must reach B on node-2 with an ack callback');
  await expectNone(a, 'chat:message:delivered', 300);
  cb();
  assert.deepEqual(await expectEvent('A after B acknowledged', a, 'chat:message:delivered'), { id: ack.id });

  // B reads it: A gets the read receipt.
  assertOk(await ackOf(b, 'chat:message:read', { id: ack.id }), 'chat:message:read from B');
  assert.deepEqual(await expectEvent('A after B read', a, 'chat:message:read'), { id: ack.id });

  // B → A (A acknowledges automatically): B's receipts.
  const back = assertOk(
    await ackOf(b, 'chat:message', { clientId: 'across-2', type: 'text', content: 'reply from node 2' }),
    'chat:message from B (node-2) to A (node-1)',
  );
  assert.deepEqual(await expectEvent('B (sender)', b, 'chat:message:sent'), { clientId: 'across-2', id: back.id, timestamp: back.timestamp });
  const got = await expectEvent('A on node-1', a, 'chat:message', (m) => m.id === back.id);
  assert.deepEqual(got, { id: back.id, roomId, type: 'text', content: 'reply from node 2', timestamp: back.timestamp, from: 'partner' });
  assert.deepEqual(await expectEvent('B after A acknowledged', b, 'chat:message:delivered'), { id: back.id });
  // Nobody gets its own message back, nor the other's receipts.
  await expectNone(a, 'chat:message', 200, (m) => m.id === ack.id);
  await expectNone(b, 'chat:message', 0, (m) => m.id === back.id);
  assert.equal(received(a, 'chat:message:delivered').length, 1, 'A: one delivered receipt, for its one message');
  assert.equal(received(b, 'chat:message:delivered').length, 1, 'B: one delivered receipt, for its one message');

  // Typing on B reaches A; with no typing:stop from B, tandem stops it itself after about 5 s.
  assertOk(await ackOf(b, 'typing:start'), 'typing:start from B');
  const typingAt = Date.now();
  assert.deepEqual(await expectEvent('A (partner typing)', a, 'typing:start'), { roomId });
  const stop = await waitForEntry(a, 'typing:stop', 12_000)
    .catch((err) => { throw new Error(`A never got the automatic typing:stop (B typed once, ~5 s expiry): ${err.message}`); });
  assert.deepEqual(stop.payload, { roomId });
  t.diagnostic(`automatic typing:stop on node-1 ${stop.at - typingAt} ms after B's typing:start on node-2`);
  // Not a timing bound, a sanity check: the stop must be the server's expiry, not an immediate echo.
  assert.ok(stop.at - typingAt >= 2000, `typing:stop came ${stop.at - typingAt} ms after typing:start: expected tandem's ~5 s expiry`);
  await expectNone(b, 'typing:start', 0);
  await expectNone(b, 'typing:stop', 0);

  // B leaves: both get chat:ended `left` and a system message; both are out of the chat.
  const left = assertOk(await ackOf(b, 'chat:leave'), 'chat:leave from B');
  assert.equal(left.state, 'online', `chat:leave ack: ${JSON.stringify(left)}`);
  assert.deepEqual(await expectEvent('A (partner left)', a, 'chat:ended'), { roomId, reason: 'left' });
  assert.deepEqual(await expectEvent('B (left)', b, 'chat:ended'), { roomId, reason: 'left' });
  const sysA = await expectEvent('A (system message)', a, 'chat:message', (m) => m.from === 'system');
  assert.equal(sysA.type, 'system', JSON.stringify(sysA));
  const sysB = await expectEvent('B (system message)', b, 'chat:message', (m) => m.from === 'system');
  assert.equal(sysB.type, 'system', JSON.stringify(sysB));
  assertRefused(await ackOf(a, 'chat:message', { clientId: 'late', type: 'text', content: 'still there?' }), 'not_in_chat', 'A after the chat ended');
  assertRefused(await ackOf(b, 'chat:leave'), 'not_in_chat', 'B leaving again');
});

test('cross-node messages keep their order: 50 sent at once each way arrive in order, once each', { timeout: 90_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 3);
  const { A, B, roomId } = await pairAcross(nodes[0], nodes[1]);
  const N = 50;
  // Every emit is written to the socket at once, in order; the acks come back as they come.
  const burst = (socket, tag) => Promise.all(Array.from({ length: N }, (_, i) => ackOf(
    socket, 'chat:message', { clientId: `${tag}-${i}`, type: 'text', content: `${tag} ${i}` },
  )));
  const [acksA, acksB] = await Promise.all([burst(A.socket, 'fromA'), burst(B.socket, 'fromB')]);

  for (const [who, acks, sender, recipient] of [['A (node-1)', acksA, A.socket, B.socket], ['B (node-2)', acksB, B.socket, A.socket]]) {
    acks.forEach((ack, i) => assertOk(ack, `message ${i} of ${N} from ${who}`));
    const ids = acks.map((ack) => ack.id);
    assert.equal(new Set(ids).size, N, `${who}: the ${N} acks must carry distinct ids`);
    const to = who.startsWith('A') ? 'B' : 'A';
    const tag = who.startsWith('A') ? 'fromA' : 'fromB';
    const { ms } = await until(`${to} receives the ${N} messages from ${who}`, () => {
      const n = received(recipient, 'chat:message', (m) => m.from === 'partner').length;
      return n >= N ? n : null;
    }, WAIT, 50).catch((err) => {
      const n = received(recipient, 'chat:message', (m) => m.from === 'partner').length;
      throw new Error(`${err.message}; ${to} got ${n} of ${N}`);
    });
    t.diagnostic(`${to} had all ${N} messages from ${who} ${ms} ms after the acks`);
    await sleep(300); // a duplicate would come right behind
    const got = received(recipient, 'chat:message', (m) => m.from === 'partner');
    const gotIds = got.map((m) => m.id);
    const dups = gotIds.filter((id, i) => gotIds.indexOf(id) !== i);
    assert.deepEqual(dups, [], `${to} got messages from ${who} twice (no reconnect happened): ${dups.join(', ')}`);
    assert.deepEqual(got.map((m) => m.content), Array.from({ length: N }, (_, i) => `${tag} ${i}`), `${to}: messages from ${who} out of order`);
    assert.deepEqual(gotIds, ids, `${to}: the messages' ids must be the acks' ids, in order`);
    for (const m of got) assert.equal(m.roomId, roomId);
    // The sender: one chat:message:sent and, since the partner acknowledged, one delivered each.
    await until(`${who} gets ${N} delivered receipts`, () => received(sender, 'chat:message:delivered').length >= N, WAIT, 50)
      .catch((err) => { throw new Error(`${err.message}; got ${received(sender, 'chat:message:delivered').length}`); });
    const delivered = received(sender, 'chat:message:delivered').map((d) => d.id);
    assert.deepEqual([...delivered].sort(), [...ids].sort(), `${who}: exactly one delivered receipt per message`);
    const sent = received(sender, 'chat:message:sent').map((s) => s.id);
    assert.deepEqual([...sent].sort(), [...ids].sort(), `${who}: exactly one chat:message:sent per message`);
  }
});

test('a token minted on node 1 opens a socket on node 3 and is refreshed on node 2', { timeout: 60_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 3);
  const g = await createGuest(nodes[0].url, uname('Tok'));
  const s = await connect(nodes[2].url, g.token, { timeoutMs: WAIT })
    .catch((err) => { throw new Error(`a token minted on node-1 was refused on node-3: connect_error ${err.message}`); });
  const est = await expectEvent('the guest on node-3', s, 'connection:established');
  assert.equal(est.sessionId, g.sessionId, `connection:established on node-3: ${JSON.stringify(est)}`);
  assert.equal(est.username, g.username, `connection:established on node-3: ${JSON.stringify(est)}`);
  assert.equal(est.state, 'online', `connection:established on node-3: ${JSON.stringify(est)}`);

  await sleep(1100); // expiresAt has one-second resolution
  const res = await api(nodes[1].url, '/api/guest/refresh', { method: 'POST', token: g.token });
  assert.equal(res.status, 200, `refresh on node-2 of a guest made on node-1 and connected on node-3: ${res.status} ${res.text}`);
  assert.equal(res.body.sessionId, g.sessionId, 'refresh keeps the sessionId');
  assert.equal(res.body.username, g.username, 'refresh keeps the username');
  assert.equal(typeof res.body.token, 'string');
  assert.notEqual(res.body.token, g.token, 'refresh gives a new token');
  assert.ok(Date.parse(res.body.expiresAt) > Date.parse(g.expiresAt), `${res.body.expiresAt} is not later than ${g.expiresAt}`);

  // The refreshed token opens a socket on node 1: the same session, still online.
  const s2 = await connect(nodes[0].url, res.body.token, { timeoutMs: WAIT })
    .catch((err) => { throw new Error(`the token refreshed on node-2 was refused on node-1: connect_error ${err.message}`); });
  const est2 = await expectEvent('the guest on node-1', s2, 'connection:established');
  assert.equal(est2.sessionId, g.sessionId);
  assert.equal(est2.state, 'online');
  // The first socket is still there and nothing told it to go.
  assert.ok(s.connected, 'the socket on node-3 was disconnected');
  await expectNone(s, 'error', 0);
});

test('a guest made on node 1 that connects on node 3 in time outlives the connect timeout on every node', { timeout: 60_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 3, { args: ['--guest-connect-timeout-secs', '2'] });
  const kept = await createGuest(nodes[0].url, uname('Kept'));
  const s = await connect(nodes[2].url, kept.token, { timeoutMs: WAIT })
    .catch((err) => { throw new Error(`a token minted on node-1 was refused on node-3: connect_error ${err.message}`); });
  await expectEvent('the guest on node-3', s, 'connection:established');
  await sleep(3500); // past the 2 s connect timeout of node 1, where it was made
  for (const node of nodes) {
    const res = await api(node.url, '/api/guest/refresh', { method: 'POST', token: kept.token });
    assert.equal(res.status, 200, `refresh on ${node.name} of a guest made on node-1 that connected on node-3 in time: ${res.status} ${res.text}`);
    assert.equal(res.body.sessionId, kept.sessionId);
  }
  assert.ok(s.connected, 'the guest\'s socket on node-3 was closed');
  await expectNone(s, 'error', 0);
  const s1 = await connect(nodes[0].url, kept.token, { timeoutMs: WAIT })
    .catch((err) => { throw new Error(`node-1 refused the guest that connected on node-3 in time: connect_error ${err.message}`); });
  assert.equal((await expectEvent('the guest on node-1', s1, 'connection:established')).sessionId, kept.sessionId);
  // Once connected, the session lives with or without sockets.
  s.close();
  s1.close();
  await sleep(2500);
  const res = await api(nodes[1].url, '/api/guest/refresh', { method: 'POST', token: kept.token });
  assert.equal(res.status, 200, `refresh on node-2 with no socket left anywhere: ${res.status} ${res.text}`);
  const s2 = await connect(nodes[1].url, kept.token, { timeoutMs: WAIT })
    .catch((err) => { throw new Error(`node-2 refused the guest after its sockets closed: connect_error ${err.message}`); });
  assert.equal((await expectEvent('the guest on node-2', s2, 'connection:established')).sessionId, kept.sessionId);
});

test('a guest made on node 1 that connects nowhere is removed after the connect timeout on every node (401, connect_error unauthorized)', { timeout: 60_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 3, { args: ['--guest-connect-timeout-secs', '2'] });
  const lost = await createGuest(nodes[0].url, uname('Lost'));
  // Within the timeout its token works on another node (a refresh does not extend the timeout).
  const early = await api(nodes[1].url, '/api/guest/refresh', { method: 'POST', token: lost.token });
  assert.equal(early.status, 200, `refresh on node-2 within the connect timeout: ${early.status} ${early.text}`);
  await sleep(4000);
  for (const node of nodes) {
    for (const token of [lost.token, early.body.token]) {
      const res = await api(node.url, '/api/guest/refresh', { method: 'POST', token });
      assert.equal(res.status, 401, `refresh on ${node.name} of a guest made on node-1 that never connected (2 s timeout, 4 s ago): expected 401 unauthorized, got ${res.status} ${res.text}`);
      assert.equal(res.body?.error?.code, 'unauthorized', res.text);
    }
    let err = null;
    try {
      await connect(node.url, lost.token, { timeoutMs: WAIT });
    } catch (e) {
      err = e;
    }
    assert.ok(err, `${node.name} accepted a socket of a guest that never connected within the 2 s timeout; expected connect_error unauthorized`);
    assert.equal(err.message, 'unauthorized', `${node.name}: connect_error for a removed guest`);
  }
});

test('a guest that moves to a third node within the grace period keeps its chat and gets what it missed', { timeout: 90_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 3, { args: ['--grace-period-secs', '30'] });
  const { A, B, roomId } = await pairAcross(nodes[0], nodes[1]);
  const b = B.socket;

  // A's socket on node 1 closes (the client closes it).
  A.socket.disconnect();
  assert.deepEqual(await expectEvent('B (partner dropped)', b, 'partner:presence'), { roomId, status: 'away' });

  // B writes while A is away: accepted, not delivered yet.
  const queued = assertOk(
    await ackOf(b, 'chat:message', { clientId: 'while-away', type: 'text', content: 'sent while you were away' }),
    'chat:message from B to an away A',
  );
  await expectEvent('B (sender)', b, 'chat:message:sent', (x) => x.id === queued.id);
  await expectNone(b, 'chat:message:delivered', 300);

  // A comes back on node 3 with the same token.
  const a3 = await connect(nodes[2].url, A.guest.token, { timeoutMs: WAIT })
    .catch((err) => { throw new Error(`A's token was refused on node-3: connect_error ${err.message}`); });
  const est = await expectEvent('A back on node-3', a3, 'connection:established');
  assert.equal(est.sessionId, A.guest.sessionId, `connection:established on node-3: ${JSON.stringify(est)}`);
  assert.equal(est.username, A.name, `connection:established on node-3: ${JSON.stringify(est)}`);
  assert.equal(est.state, 'in_chat', `A is back within the grace period, still in its chat: ${JSON.stringify(est)}`);
  assert.deepEqual(est.room, { roomId, partner: { username: B.name } }, `connection:established.room on node-3: ${JSON.stringify(est)}`);
  assert.deepEqual(
    await expectEvent('B (partner back)', b, 'partner:presence', (p) => p.status === 'online'),
    { roomId, status: 'online' },
  );
  assert.deepEqual(received(b, 'partner:presence').map((p) => p.status), ['away', 'online'], 'B: presence away, then online, once each');

  // The message B sent meanwhile reaches A on node 3 with its original id; B gets delivered.
  const missed = await expectEvent('A on node-3 (the message B sent while A was away)', a3, 'chat:message', (m) => m.id === queued.id);
  assert.deepEqual(missed, {
    id: queued.id, roomId, type: 'text', content: 'sent while you were away', timestamp: queued.timestamp, from: 'partner',
  });
  assert.deepEqual(await expectEvent('B (after A on node-3 acknowledged)', b, 'chat:message:delivered', (x) => x.id === queued.id), { id: queued.id });

  // The chat goes on both ways from node 3.
  const fromA = assertOk(await ackOf(a3, 'chat:message', { clientId: 'from-3', type: 'text', content: 'hello from node 3' }), 'chat:message from A on node-3');
  assert.equal((await expectEvent('B', b, 'chat:message', (m) => m.id === fromA.id)).content, 'hello from node 3');
  await expectEvent('A on node-3 (delivered)', a3, 'chat:message:delivered', (x) => x.id === fromA.id);
  const fromB = assertOk(await ackOf(b, 'chat:message', { clientId: 'to-3', type: 'text', content: 'welcome to node 3' }), 'chat:message from B to A on node-3');
  assert.equal((await expectEvent('A on node-3', a3, 'chat:message', (m) => m.id === fromB.id)).content, 'welcome to node 3');
  await expectEvent('B (delivered)', b, 'chat:message:delivered', (x) => x.id === fromB.id);
  await sleep(300);
  assert.equal(received(a3, 'chat:message', (m) => m.id === queued.id).length, 1, 'A on node-3 got the queued message once');
  assert.equal(received(b, 'chat:message:delivered', (x) => x.id === queued.id).length, 1, 'B got one delivered receipt for the queued message');
  await expectNone(b, 'chat:ended', 0);
  await expectNone(a3, 'chat:ended', 0);
});

test('300 guests on three nodes searching at once: each paired exactly once, partners mutual, nobody left', { timeout: 120_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 3);
  // Odd counts on two nodes: nodes that only paired their own guests would leave one on each.
  const perNode = [101, 101, 98];
  const slots = perNode.flatMap((n, i) => Array.from({ length: n }, () => nodes[i]));
  const started = Date.now();
  const guests = await inBatches(slots, 50, async (node) => {
    const guest = await createGuest(node.url, uname('M'));
    const socket = await connect(node.url, guest.token, { timeoutMs: 20_000 });
    await expectEvent(`${guest.username} on ${node.name}`, socket, 'connection:established', () => true, 20_000);
    return { guest, socket, node, name: guest.username };
  });
  t.diagnostic(`${guests.length} guests created and connected in ${Date.now() - started} ms`);

  const searchAt = Date.now();
  const acks = await Promise.all(guests.map((g) => ackOf(g.socket, 'match:start', {}, 20_000)));
  acks.forEach((ack, i) => {
    assertOk(ack, `match:start of ${guests[i].name} on ${guests[i].node.name}`);
    assert.ok(['searching', 'in_chat'].includes(ack.state), `match:start state: ${JSON.stringify(ack)}`);
  });
  const results = await Promise.allSettled(guests.map((g) => waitFor(g.socket, 'match:found', 20_000)));
  const unpaired = guests.filter((_, i) => results[i].status === 'rejected');
  const byNode = (list) => nodes.map((n) => `${n.name}: ${list.filter((g) => g.node === n).length}`).join(', ');
  assert.equal(unpaired.length, 0, `${unpaired.length} of ${guests.length} guests got no match:found within 20 s (${byNode(unpaired)})`);
  t.diagnostic(`all ${guests.length} paired ${Date.now() - searchAt} ms after the searches started`);
  guests.forEach((g, i) => { g.found = results[i].value; });

  await sleep(1500); // a second match:found would come soon after the first
  const twice = guests.filter((g) => received(g.socket, 'match:found').length !== 1);
  assert.deepEqual(twice.map((g) => `${g.name}@${g.node.name}: ${received(g.socket, 'match:found').length}`), [], 'guests that got more than one match:found');
  const ended = guests.filter((g) => received(g.socket, 'chat:ended').length > 0);
  assert.deepEqual(ended.map((g) => g.name), [], 'guests whose chat ended (a guest paired twice loses a room)');

  const byName = new Map(guests.map((g) => [g.name, g]));
  const rooms = new Map();
  let crossNode = 0;
  for (const g of guests) {
    const partner = byName.get(g.found.partner?.username);
    assert.ok(partner, `${g.name}'s partner ${JSON.stringify(g.found.partner)} is none of the 300 guests`);
    assert.notEqual(partner, g, `${g.name} was paired with itself`);
    assert.equal(partner.found.partner?.username, g.name,
      `not mutual: ${g.name}@${g.node.name} has partner ${partner.name}@${partner.node.name}, whose partner is ${partner.found.partner?.username}`);
    assert.equal(partner.found.roomId, g.found.roomId, `${g.name} and ${partner.name} got different roomIds`);
    if (!rooms.has(g.found.roomId)) rooms.set(g.found.roomId, []);
    rooms.get(g.found.roomId).push(g.name);
    if (partner.node !== g.node) crossNode++;
  }
  assert.equal(rooms.size, guests.length / 2, `${guests.length} guests must make ${guests.length / 2} rooms, got ${rooms.size}`);
  for (const [roomId, members] of rooms) assert.equal(members.length, 2, `room ${roomId} has ${members.length} guests: ${members.join(', ')}`);
  t.diagnostic(`${crossNode / 2} of ${rooms.size} pairs span two nodes`);
});

test('Redis stopped mid-chat: a same-node chat goes on, cross-node messages are refused (service_unavailable), and all flows again once Redis is back', { timeout: 120_000 }, async (t) => {
  const redis = await restartableRedis(t);
  const first = redis.first;
  const { nodes } = await clusterFor(t, first, 2);
  // A same-node pair on node 1, then a cross-node pair (node 1 and node 2).
  const local = await pairAcross(nodes[0], nodes[0]);
  const cross = await pairAcross(nodes[0], nodes[1]);
  const [la, lb, ca, cb] = [local.A.socket, local.B.socket, cross.A.socket, cross.B.socket];
  // Both pairs chat before the outage.
  for (const [from, to, what] of [[la, lb, 'local'], [ca, cb, 'cross A→B'], [cb, ca, 'cross B→A']]) {
    const ack = assertOk(await ackOf(from, 'chat:message', { clientId: `pre-${what}`, type: 'text', content: `before the outage ${what}` }), `${what} before the outage`);
    await expectEvent(`${what}: recipient before the outage`, to, 'chat:message', (m) => m.id === ack.id);
  }

  await first.kill();
  await allReady(nodes, 503); // both nodes know Redis is gone
  t.diagnostic('Redis killed; both nodes answer /readyz 503');

  // The same-node chat goes on, both ways, with receipts.
  for (let i = 0; i < 3; i++) {
    for (const [from, to, who] of [[la, lb, 'local A→B'], [lb, la, 'local B→A']]) {
      const ack = assertOk(
        await ackOf(from, 'chat:message', { clientId: `out-${who}-${i}`, type: 'text', content: `during the outage ${who} ${i}` }),
        `${who} on node-1 while Redis is down`,
      );
      await expectEvent(`${who}: recipient on node-1 while Redis is down`, to, 'chat:message', (m) => m.id === ack.id);
      await expectEvent(`${who}: sender on node-1 while Redis is down (delivered)`, from, 'chat:message:delivered', (x) => x.id === ack.id);
    }
  }

  // The cross-node pair: each message is either refused with service_unavailable (and then never
  // arrives) or accepted (and then it must arrive, at the latest once Redis is back).
  const outcomes = [];
  for (const [from, to, who] of [[ca, cb, 'cross A(node-1)→B(node-2)'], [cb, ca, 'cross B(node-2)→A(node-1)']]) {
    const content = `during the outage ${who}`;
    const ack = await ackOf(from, 'chat:message', { clientId: `out-${outcomes.length}`, type: 'text', content });
    assert.ok(ack && typeof ack === 'object', `${who}: ack ${JSON.stringify(ack)}`);
    if (ack.ok === false) assertRefused(ack, 'service_unavailable', `${who} while Redis is down`);
    else assertOk(ack, `${who} while Redis is down`);
    outcomes.push({ who, ack, to, from, content });
    t.diagnostic(`${who} while Redis is down: ${JSON.stringify(ack)}`);
  }
  assert.ok(
    outcomes.some((o) => o.ack.ok === false),
    `a cross-node chat cannot reach its home without the bus, yet neither direction was refused with service_unavailable: ${outcomes.map((o) => `${o.who}: ${JSON.stringify(o.ack)}`).join('; ')}`,
  );
  // The local pair is untouched by the refusals.
  await expectNone(la, 'chat:ended', 0);
  await expectNone(ca, 'chat:ended', 0);
  await expectNone(cb, 'chat:ended', 0);

  // Redis back on the same port (empty).
  await redis.restart();
  const back = Date.now();

  // Cross-node messages flow again within ~10 s (refusals meanwhile must be service_unavailable).
  for (const [from, to, who] of [[ca, cb, 'cross A→B'], [cb, ca, 'cross B→A']]) {
    let n = 0;
    const { value: ack } = await retryWhileUnavailable(
      `${who}: a chat:message accepted again after Redis came back`,
      () => ackOf(from, 'chat:message', { clientId: `again-${who}-${n}`, type: 'text', content: `after the outage ${who} ${n++}` }),
    );
    await expectEvent(`${who}: recipient after Redis came back`, to, 'chat:message', (m) => m.id === ack.id);
    await expectEvent(`${who}: sender after Redis came back (delivered)`, from, 'chat:message:delivered', (x) => x.id === ack.id);
    t.diagnostic(`${who} flows again ${Date.now() - back} ms after Redis restarted`);
  }
  // What was refused during the outage never arrives; what was accepted arrives once.
  for (const o of outcomes) {
    if (o.ack.ok) {
      await expectEvent(`${o.who}: a message accepted (ok ack) while Redis was down was never delivered`, o.to, 'chat:message', (m) => m.id === o.ack.id);
    }
  }
  await sleep(300);
  for (const o of outcomes) {
    const copies = received(o.to, 'chat:message', (m) => m.content === o.content);
    if (o.ack.ok) assert.equal(new Set(copies.map((m) => m.id)).size, 1, `${o.who}: the accepted message arrived under ${copies.length} ids`);
    else assert.equal(copies.length, 0, `${o.who}: refused with service_unavailable, yet it arrived: ${JSON.stringify(copies)}`);
  }

  // New cross-node matches form again.
  const E = await guestOn(nodes[0], 'E');
  const F = await guestOn(nodes[1], 'F');
  for (const [g, who] of [[E, 'E on node-1'], [F, 'F on node-2']]) {
    await retryWhileUnavailable(`${who}: match:start accepted after Redis came back`, () => ackOf(g.socket, 'match:start', {}));
  }
  const [fe, ff] = await Promise.all([
    expectEvent('E on node-1 (searching after Redis came back)', E.socket, 'match:found'),
    expectEvent('F on node-2 (searching after Redis came back)', F.socket, 'match:found'),
  ]);
  assert.equal(fe.roomId, ff.roomId, 'E and F must get the same roomId');
  assert.equal(fe.partner?.username, F.name, `E's partner: ${JSON.stringify(fe)}`);
  assert.equal(ff.partner?.username, E.name, `F's partner: ${JSON.stringify(ff)}`);
  t.diagnostic(`a new cross-node pair ${Date.now() - back} ms after Redis restarted`);
  const hello = assertOk(await ackOf(E.socket, 'chat:message', { clientId: 'ef', type: 'text', content: 'new pair' }), 'E → F');
  await expectEvent('F (new cross-node pair)', F.socket, 'chat:message', (m) => m.id === hello.id);
});

/**
 * A new socket of `guest` through `node`, once it is back in chat `roomId` (after a home died,
 * its first tries may still reach the dead home, or a node not done taking the room over).
 */
async function backInChat(who, guest, node, roomId) {
  const back = await until(`${who} back in its chat through ${node.name}`, async () => {
    const s = await connect(node.url, guest.token, { timeoutMs: WAIT });
    try {
      const est = await waitFor(s, 'connection:established', 3000);
      if (est.state === 'in_chat' && est.room?.roomId === roomId) return s;
    } catch {
      // Not yet.
    }
    s.close();
    return null;
  }, 30_000, 500);
  return back.value;
}

/** Kills `node` with `signal` and resolves once its process exited. */
async function stopNode(node, signal) {
  const exited = new Promise((resolve) => node.proc.once('exit', resolve));
  node.proc.kill(signal);
  await exited;
}

test('the home node killed (SIGKILL): the partner sees away, the guest comes back through another node, and the chat goes on', { timeout: 90_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 3, { args: ['--grace-period-secs', '30'] });
  // A on node 1 searches first, B on node 2 second: B's node formed the pair and is the home.
  const { A, B, roomId } = await pairAcross(nodes[0], nodes[1]);
  const a = A.socket;
  const before = assertOk(await ackOf(a, 'chat:message', { clientId: 'before', content: 'before the crash' }), 'A before the crash');
  await expectEvent('B before the crash', B.socket, 'chat:message', (m) => m.id === before.id);

  await stopNode(nodes[1], 'SIGKILL');
  const killedAt = Date.now();
  // A's node sees the home leave the registry and takes the room over: B is away.
  const away = await expectEvent('A after the home died', a, 'partner:presence', () => true, 15_000);
  assert.deepEqual(away, { roomId, status: 'away' });
  t.diagnostic(`A saw B away ${Date.now() - killedAt} ms after the kill`);
  // A writes while B is away: accepted and kept for B.
  const kept = assertOk(await ackOf(a, 'chat:message', { clientId: 'kept', content: 'are you there?' }), 'A while B is away');

  // B's client reconnects through the load balancer to node 3 with the same token.
  B.socket.close();
  const b = await connect(nodes[2].url, B.guest.token, { timeoutMs: WAIT });
  const est = await expectEvent('B on node 3', b, 'connection:established');
  assert.equal(est.state, 'in_chat', JSON.stringify(est));
  assert.equal(est.room?.roomId, roomId, JSON.stringify(est));
  assert.equal(est.room?.partner?.username, A.name, JSON.stringify(est));
  await expectEvent('B gets what A wrote meanwhile', b, 'chat:message', (m) => m.id === kept.id);
  assert.deepEqual(await expectEvent('A sees B back', a, 'partner:presence', (p) => p.status === 'online'), { roomId, status: 'online' });
  await expectEvent('A (delivered)', a, 'chat:message:delivered', (x) => x.id === kept.id);
  // Both ways again.
  const reply = assertOk(await ackOf(b, 'chat:message', { clientId: 'reply', content: 'back' }), 'B after coming back');
  await expectEvent('A gets B\'s reply', a, 'chat:message', (m) => m.id === reply.id);
  await expectNone(a, 'chat:ended', 0);
  b.close();
});

test('the home node killed and the partner never returns: the chat ends `disconnected` after the grace period', { timeout: 60_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 2, { args: ['--grace-period-secs', '3'] });
  const { A, roomId } = await pairAcross(nodes[0], nodes[1]);
  await stopNode(nodes[1], 'SIGKILL');
  await expectEvent('A after the home died', A.socket, 'partner:presence', (p) => p.status === 'away', 15_000);
  const ended = await expectEvent('A after the grace period', A.socket, 'chat:ended', () => true, 10_000);
  assert.deepEqual(ended, { roomId, reason: 'disconnected' });
  // A may search again.
  const ack = assertOk(await ackOf(A.socket, 'match:start', {}), 'match:start after the chat ended');
  assert.equal(ack.state, 'searching');
});

test('the home node drained (SIGTERM): its guest hears server:shutdown, reconnects elsewhere and keeps its chat', { timeout: 90_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 3, { args: ['--grace-period-secs', '30', '--shutdown-grace-secs', '2'] });
  const { A, B, roomId } = await pairAcross(nodes[0], nodes[1]);
  const shutdown = expectEvent('B on the draining node', B.socket, 'server:shutdown', () => true, 15_000);
  const exited = new Promise((resolve) => nodes[1].proc.once('exit', resolve));
  nodes[1].proc.kill('SIGTERM');
  await shutdown;
  // As the web client does: reconnect elsewhere with the same token.
  B.socket.close();
  const b = await connect(nodes[2].url, B.guest.token, { timeoutMs: WAIT });
  const est = await expectEvent('B on node 3', b, 'connection:established');
  assert.equal(est.state, 'in_chat', JSON.stringify(est));
  assert.equal(est.room?.roomId, roomId);
  await exited;
  const m = assertOk(await ackOf(b, 'chat:message', { clientId: 'after', content: 'after the drain' }), 'B after the drain');
  await expectEvent('A gets B\'s message after the drain', A.socket, 'chat:message', (x) => x.id === m.id);
  const r = assertOk(await ackOf(A.socket, 'chat:message', { clientId: 'r', content: 'hi' }), 'A after the drain');
  await expectEvent('B gets A\'s message after the drain', b, 'chat:message', (x) => x.id === r.id);
  await expectNone(A.socket, 'chat:ended', 0);
  b.close();
});

test('realtime:stats and GET /api/stats count the whole cluster, each guest once', { timeout: 60_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 2);
  const expect = async (what, want) => {
    for (const node of nodes) {
      await until(`${what}: /api/stats on ${node.name}`, async () => {
        const s = (await api(node.url, '/api/stats')).body;
        return Object.entries(want).every(([k, v]) => s[k] === v) ? s : new Error(JSON.stringify(s));
      }, 10_000);
    }
  };
  const { A, B } = await pairAcross(nodes[0], nodes[1]);
  // A pair spanning the two nodes: two in chat (the home holds a visitor copy of the remote
  // guest, which its own node counts instead).
  await expect('a cross-node pair', { totalUsers: 2, onlineUsers: 2, connectedUsers: 2, availableUsers: 0 });
  // A third guest searching on node 2.
  const C = await guestOn(nodes[1], 'C');
  assertOk(await ackOf(C.socket, 'match:start', {}), 'match:start of C');
  await expect('a pair and a searching guest', { totalUsers: 3, onlineUsers: 3, connectedUsers: 2, availableUsers: 1 });
  // The live broadcast counts the cluster too.
  await expectEvent('A (realtime:stats)', A.socket, 'realtime:stats', (s) => s.totalUsers === 3 && s.availableUsers === 1, 10_000);
  // Each node exports every live node's guests from the registry (tandem_cluster_node_guests).
  await until('node-1 exports node-2\'s guests', async () => {
    const text = (await api(nodes[0].url, '/metrics')).text;
    const m = text.match(/^tandem_cluster_node_guests\{node="node-2"\} (\d+)/m);
    return m && Number(m[1]) >= 2 ? m : null;
  });
  for (const s of [A.socket, B.socket, C.socket]) s.close();
});

/** POST /api/files on `url` with one PNG; resolves with the status and the JSON body. */
async function uploadPng(url, token, bytes) {
  const form = new FormData();
  form.append('clientId', `f-${Date.now()}`);
  form.append('file', new Blob([bytes], { type: 'image/png' }), 'cat.png');
  const res = await fetch(`${url}/api/files`, {
    method: 'POST', body: form, headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(15_000),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined, text };
}

async function getFile(url, path, token) {
  const res = await fetch(`${url}${path}`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(10_000) });
  return { status: res.status, bytes: Buffer.from(await res.arrayBuffer()), type: res.headers.get('content-type') };
}

test('a file shared in a cross-node chat: uploaded through one node, posted at the home, downloaded through any node with the same URL, gone with the chat', { timeout: 60_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 3);
  // A on node 1, B on node 2 (the home).
  const { A, B, roomId } = await pairAcross(nodes[0], nodes[1]);
  const bytes = png(16, 16, 200);
  // A's upload lands on node 3 (a load balancer's choice): stored there, posted at the home.
  const up = await uploadPng(nodes[2].url, A.guest.token, bytes);
  assert.equal(up.status, 201, up.text);
  const msg = await expectEvent('B gets the file message', B.socket, 'chat:message', (m) => m.type === 'file');
  assert.equal(msg.id, up.body.messageId);
  assert.equal(msg.content.url, up.body.url);
  await expectEvent('A (sent)', A.socket, 'chat:message:sent', (x) => x.id === up.body.messageId);
  // B downloads it through each node with the same signed URL.
  for (const node of nodes) {
    const got = await getFile(node.url, up.body.url, B.guest.token);
    assert.equal(got.status, 200, `download through ${node.name}: ${got.status}`);
    assert.ok(got.bytes.equals(bytes), `the bytes through ${node.name}`);
    assert.equal(got.type, 'image/png');
  }
  // A stranger's token is refused through another node too.
  const stranger = await createGuest(nodes[0].url, uname('S'));
  assert.equal((await getFile(nodes[0].url, up.body.url, stranger.token)).status, 403);
  // The chat ends at the home: the file goes from node 3 as well.
  assertOk(await ackOf(B.socket, 'chat:leave', undefined), 'B leaves');
  await until('the file is gone after the chat ended', async () => {
    const got = await getFile(nodes[2].url, up.body.url, B.guest.token);
    return got.status === 404 ? got : new Error(`status ${got.status}`);
  });
});

test('guest creations per address are limited across the cluster, not per node', { timeout: 30_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 2, { args: ['--guest-creations-per-min', '3'] });
  const statuses = [];
  for (const node of [nodes[0], nodes[1], nodes[0], nodes[1]]) {
    const res = await api(node.url, '/api/guest', { method: 'POST', body: {} });
    statuses.push(res.status);
    if (res.status === 429) {
      assert.equal(res.body?.error?.code, 'rate_limited', res.text);
      const wait = Number(res.headers.get('retry-after'));
      assert.ok(wait >= 1 && wait <= 60, `Retry-After ${wait}`);
    }
  }
  // Each node alone would allow three: the fourth of the address is refused wherever it lands.
  assert.deepEqual(statuses, [201, 201, 201, 429]);
});

test('open sessions per address are limited across the cluster, not per node; reaped ones free their place', { timeout: 40_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 2, {
    args: ['--max-sessions-per-ip', '3', '--guest-creations-per-min', '100', '--guest-connect-timeout-secs', '4'],
  });
  await until('both nodes in each view', async () => {
    for (const n of nodes) {
      if ((await api(n.url, '/metrics')).text.match(/^tandem_cluster_nodes (\d+)/m)?.[1] !== '2') return null;
    }
    return true;
  });
  const create = (node) => api(node.url, '/api/guest', { method: 'POST', body: {} });
  // Two on node 1, one on node 2: three open sessions of one address in the cluster.
  for (const node of [nodes[0], nodes[0], nodes[1]]) assert.equal((await create(node)).status, 201);
  // A node publishes its counts about once a second.
  await sleep(1500);
  // Each node alone would allow three: a fourth is refused wherever it lands.
  for (const node of nodes) {
    const r = await create(node);
    assert.equal(r.status, 429, `${node.name}: ${r.text}`);
    assert.equal(r.body?.error?.code, 'too_many_sessions', r.text);
  }
  // None of them connected a socket: reaped after 4 s, their places are free on both nodes.
  const freed = await until('the reaped sessions freed their places', async () => {
    const r = await create(nodes[1]);
    return r.status === 201 ? r : null;
  }, 15_000, 500);
  assert.equal(freed.value.status, 201);
});

test('open connections per address are limited across the cluster, and a closed one frees its place', { timeout: 30_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 2, { args: ['--max-connections-per-ip', '3'] });
  // Every node sees the other before the counts are compared (a node counts the live ones).
  await until('both nodes in each view', async () => {
    for (const n of nodes) {
      if ((await api(n.url, '/metrics')).text.match(/^tandem_cluster_nodes (\d+)/m)?.[1] !== '2') return null;
    }
    return true;
  });
  const guests = [];
  for (let i = 0; i < 5; i++) guests.push(await createGuest(nodes[i % 2].url, uname(`ip${i}`)));
  const open = [];
  for (const [g, node] of [[guests[0], nodes[0]], [guests[1], nodes[1]], [guests[2], nodes[0]]]) {
    const s = await connect(node.url, g.token, { timeoutMs: WAIT });
    await expectEvent(`${g.username} on ${node.name}`, s, 'connection:established');
    open.push(s);
  }
  // The fourth from the same address is refused on either node, though each holds fewer than 3.
  await assertRefusedConnect(nodes[1].url, guests[3].token, 'rate_limited', { timeoutMs: WAIT });
  // One closes on node 1: a place is free again, on node 2 too.
  open[0].close();
  const s = await until('a connection accepted on node 2 after one closed on node 1', async () => {
    try {
      return await connect(nodes[1].url, guests[4].token, { timeoutMs: 2000 });
    } catch {
      return null;
    }
  });
  await expectEvent('the new connection', s.value, 'connection:established');
  for (const x of [...open, s.value]) x.close();
});

test('the home node killed while the partner was away: what the survivor sent and the dead home held is delivered after the takeover', { timeout: 90_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 3, { args: ['--grace-period-secs', '30'] });
  // A on node 1, B on node 2 (the home). B goes away; A writes twice (acknowledged as sent).
  const { A, B, roomId } = await pairAcross(nodes[0], nodes[1]);
  B.socket.close();
  await expectEvent('A sees B away', A.socket, 'partner:presence', (p) => p.status === 'away');
  const sent = [];
  for (const content of ['one', 'two']) {
    sent.push(assertOk(await ackOf(A.socket, 'chat:message', { clientId: `k-${content}`, content }), `A: ${content}`));
  }
  await stopNode(nodes[1], 'SIGKILL');
  // B comes back through node 3 once node 1 has taken the room over.
  const b = await backInChat('B', B.guest, nodes[2], roomId);
  for (const m of sent) {
    await expectEvent(`B gets "${m.id}" that the dead home held`, b, 'chat:message', (x) => x.id === m.id);
    await expectEvent('A (delivered)', A.socket, 'chat:message:delivered', (x) => x.id === m.id);
  }
  b.close();
});

test('the home node killed with both guests on it: what it acknowledged and had not delivered is read from its journal in Redis and delivered after the takeover', { timeout: 90_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes } = await clusterFor(t, redis, 3, { args: ['--grace-period-secs', '30'] });
  // A and B both on node 2, the home: no other node holds anything of their chat.
  const { A, B, roomId } = await pairAcross(nodes[1], nodes[1]);
  B.socket.close();
  await expectEvent('A sees B away', A.socket, 'partner:presence', (p) => p.status === 'away');
  const sent = [];
  for (const content of ['one', 'two', 'three']) {
    sent.push({ content, ...assertOk(await ackOf(A.socket, 'chat:message', { clientId: `k-${content}`, content }), `A: ${content}`) });
  }
  await expectEvent('A: chat:message:sent for the last one', A.socket, 'chat:message:sent', (x) => x.id === sent[2].id);
  // The chat's journal in Redis: the three entries (and the field that keeps the key), expiring.
  const key = `tandem:j:${roomId}`;
  assert.equal(await redis.command('HLEN', key), 4, 'three entries and "_"');
  const ttl = await redis.command('PTTL', key);
  assert.ok(ttl > 23 * 3600_000, `the journal expires in a day: PTTL ${ttl}`);
  await stopNode(nodes[1], 'SIGKILL');
  A.socket.close();
  // A returns through node 1, which takes the room over and reads its journal; B through node 3.
  const a = await backInChat('A', A.guest, nodes[0], roomId);
  const b = await backInChat('B', B.guest, nodes[2], roomId);
  for (const m of sent) {
    const got = await expectEvent(`B gets "${m.content}" that the dead home had acknowledged`, b, 'chat:message', (x) => x.id === m.id);
    assert.equal(got.content, m.content);
    await expectEvent(`A (delivered "${m.content}")`, a, 'chat:message:delivered', (x) => x.id === m.id);
  }
  const got = b.__log.filter((e) => e.event === 'chat:message').map((e) => e.args[0].content);
  assert.deepEqual(got, ['one', 'two', 'three'], 'in order, once each');
  // Delivered: the new home removes the entries (within 100 ms), the key itself stays.
  await until('the delivered entries removed from the journal', async () => ((await redis.command('HLEN', key)) === 1 ? true : null), 5000, 100);
  // The chat ends: its journal goes.
  assertOk(await ackOf(b, 'chat:leave', {}), 'B leaves');
  await until('the journal gone with the chat', async () => ((await redis.command('EXISTS', key)) === 0 ? true : null), 5000, 100);
  a.close();
  b.close();
});

test('Redis restarted empty: every node writes its guests, chats, searches and files again; a guest moves to a node that never held it, a searching guest is paired, a file downloads elsewhere', { timeout: 120_000 }, async (t) => {
  const redis = await restartableRedis(t);
  const first = redis.first;
  const { nodes } = await clusterFor(t, first, 3, { args: ['--grace-period-secs', '30'] });
  // A (node 1) and B (node 2, the home) chat; A shares a file through node 1; S searches on node 1.
  const { A, B, roomId } = await pairAcross(nodes[0], nodes[1]);
  const bytes = png(8, 8, 90);
  const up = await uploadPng(nodes[0].url, A.guest.token, bytes);
  assert.equal(up.status, 201, up.text);
  await expectEvent('B gets the file message', B.socket, 'chat:message', (m) => m.type === 'file');
  const S = await guestOn(nodes[0], 'S');
  assert.equal(assertOk(await ackOf(S.socket, 'match:start', { interests: ['chess'] }), 'S searches').state, 'searching');
  await expectEvent('S', S.socket, 'match:searching');
  const before = await Promise.all(nodes.map((n) => api(n.url, '/metrics')));
  for (const m of before) assert.match(m.text, /^tandem_cluster_restores_total 0$/m);

  // Redis restarts on the same port, empty (no snapshot, no AOF).
  const current = await redis.restart();
  const back = Date.now();
  await Promise.all(nodes.map((node) => until(`${node.name} noticed Redis lost its data`, async () => {
    const text = (await api(node.url, '/metrics')).text;
    return /^tandem_cluster_restores_total 1$/m.test(text);
  }, 15_000)));
  t.diagnostic(`every node noticed ${Date.now() - back} ms after the restart`);
  // The records are back: A's names its chat's home and B, and S waits in the queue again.
  const { value: record } = await until('A\'s session record written again', async () => {
    const flat = await current.command('HGETALL', `tandem:s:${A.guest.sessionId}`);
    const r = Object.fromEntries(Array.from({ length: flat.length / 2 }, (_, i) => [flat[2 * i], flat[2 * i + 1]]));
    return r.h ? r : null;
  });
  assert.ok(record.h.endsWith(`:${roomId}`), `A's record names the room: ${JSON.stringify(record)}`);
  assert.equal(record.p, B.guest.sessionId);
  assert.equal(record.n, B.name);
  assert.equal(record.c, '1', 'A was connected');
  const ttl = Number(await current.command('PTTL', `tandem:s:${A.guest.sessionId}`));
  assert.ok(ttl > 60_000, `A's record expires with its token, not now: PTTL ${ttl}`);

  // A moves to node 3, which never held it: it is let in with its chat (from the record).
  A.socket.disconnect();
  await expectEvent('B (A away)', B.socket, 'partner:presence', (p) => p.status === 'away');
  const a3 = await connect(nodes[2].url, A.guest.token, { timeoutMs: WAIT })
    .catch((err) => { throw new Error(`A's token was refused on node-3 after Redis restarted empty: connect_error ${err.message}`); });
  const est = await expectEvent('A on node-3', a3, 'connection:established');
  assert.equal(est.state, 'in_chat', `A keeps its chat on node-3: ${JSON.stringify(est)}`);
  assert.deepEqual(est.room, { roomId, partner: { username: B.name } });
  await expectEvent('B (A back)', B.socket, 'partner:presence', (p) => p.status === 'online');
  const hi = assertOk(await ackOf(a3, 'chat:message', { clientId: 'after-reset', type: 'text', content: 'still here' }), 'A on node-3 writes');
  await expectEvent('B', B.socket, 'chat:message', (m) => m.id === hi.id);

  // S, searching since before the restart, is paired with a newcomer on node 2.
  const T = await guestOn(nodes[1], 'T');
  assertOk(await ackOf(T.socket, 'match:start', { interests: ['chess'] }), 'T searches');
  const [fs, ft] = await Promise.all([
    expectEvent('S (searching since before the restart)', S.socket, 'match:found'),
    expectEvent('T', T.socket, 'match:found'),
  ]);
  assert.equal(fs.roomId, ft.roomId);
  assert.equal(fs.partner?.username, T.name);

  // The file stored on node 1 downloads through node 3 with the same URL.
  const got = await getFile(nodes[2].url, up.body.url, B.guest.token);
  assert.equal(got.status, 200, `the file through node-3 after Redis restarted empty: ${got.status}`);
  assert.ok(got.bytes.equals(bytes));
  await expectNone(B.socket, 'chat:ended', 0);
});
