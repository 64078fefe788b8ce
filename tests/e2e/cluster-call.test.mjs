// Calls across nodes sharing one Redis (--redis-url; docs/cluster.md, "Calls"): both guests'
// WebRTC connections terminate on one SFU, the chat's home node's (the node whose core paired
// them: the one where the second guest started searching). A guest on another node signals
// through its own node (its call:* and webrtc:* events go to the home and the home's answers
// and candidates come back), its node knows its call (GET /api/ice-servers there names the
// media node's TURN server, with credentials valid there), and when the call ends both nodes
// forget it (409 no_call). Media flows both ways, one side relayed through the media node's TURN
// server with the credentials its own node handed out. A guest whose socket moves to a third
// node mid-call restarts ICE towards the same media node and the call goes on.
//
// Each test starts its own redis-server and nodes (with media: their own loopback UDP port each,
// one media thread) on free loopback ports and stops them by PID (harness *For(t, …)).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import {
  api, assertHttpError, assertOk, clusterFor, connect, createGuest, expectNone, redisFor,
  sleep, uname, waitFor,
  ackOf, expectEvent,
} from './harness.mjs';
import { CallPeer, until } from './media.mjs';
import {
  A_MEDIA, B_MEDIA, ResumablePeer, counts, dump, events, grewBy, logIndex, mediaFlowing,
  sdpAttr, selectedPair,
} from './call-helpers.mjs';

// Every wait for an event that crosses nodes (milliseconds when it works; this only bounds how
// long a failing test hangs).
const WAIT = 10_000;
const MEDIA_DEADLINE_MS = 20_000;

/** A guest created on `node` and connected there. */
async function guestOn(node, prefix) {
  const guest = await createGuest(node.url, uname(prefix));
  const socket = await connect(node.url, guest.token, { timeoutMs: WAIT });
  const established = await expectEvent(`${prefix} on ${node.name}`, socket, 'connection:established');
  assert.equal(established.state, 'online');
  return { guest, socket };
}

/**
 * B on `nodeB` searches first (it waits in the cluster's queue in Redis), then A on `nodeA`:
 * A's node forms the pair and is the chat's home (the media node of its calls). Resolves with
 * `{ A, B, roomId }`.
 */
async function pairHomedAt(redis, nodeA, nodeB) {
  const B = await guestOn(nodeB, 'B');
  const A = await guestOn(nodeA, 'A');
  assert.equal(assertOk(await ackOf(B.socket, 'match:start', {}), 'match:start of B').state, 'searching');
  await expectEvent(`B on ${nodeB.name}`, B.socket, 'match:searching');
  // The search is acknowledged before the node's Redis worker queues it.
  await until(
    async () => (await redis.command('ZSCORE', 'tandem:{mm}:queue', B.guest.sessionId)) !== null,
    WAIT,
    () => `B never reached the cluster's queue`,
  );
  assertOk(await ackOf(A.socket, 'match:start', {}), 'match:start of A');
  const fa = await expectEvent(`A on ${nodeA.name}`, A.socket, 'match:found');
  const fb = await expectEvent(`B on ${nodeB.name}`, B.socket, 'match:found');
  assert.equal(fa.roomId, fb.roomId);
  assert.equal(fa.partner.username, B.guest.username);
  assert.equal(fb.partner.username, A.guest.username);
  return { A, B, roomId: fa.roomId };
}

/** The nodes' registry entries (`tandem:{cluster}:node-info`), by node name. */
async function registry(redis) {
  const flat = await redis.command('HGETALL', 'tandem:{cluster}:node-info');
  const byName = {};
  for (let i = 0; i < flat.length; i += 2) {
    const entry = JSON.parse(flat[i + 1]);
    byName[entry.name] = entry;
  }
  return byName;
}

/** The turn:/turns: URLs of a registry entry's TURN server. */
function turnUrls(entry) {
  const { ip, port, tls_port: tls } = entry.turn;
  const urls = [`turn:${ip}:${port}?transport=udp`, `turn:${ip}:${port}?transport=tcp`];
  if (tls) urls.push(`turns:${ip}:${tls}?transport=tcp`);
  return urls;
}

/** GET /api/ice-servers of `guest` on `node`: asserts 200 and returns the one TURN entry. */
async function iceServersOn(node, guest, turnSecret) {
  const res = await api(node.url, '/api/ice-servers', { token: guest.token });
  assert.equal(res.status, 200, `/api/ice-servers of ${guest.username} on ${node.name}: ${res.status} ${res.text}`);
  assert.equal(res.headers.get('cache-control'), 'no-store');
  assert.equal(res.body.iceServers.length, 1, JSON.stringify(res.body));
  const [entry] = res.body.iceServers;
  const [expiry, session, call] = entry.username.split(':');
  assert.equal(session, guest.sessionId, `the username names the guest: ${entry.username}`);
  assert.match(call, /^\d+$/, `and the call: ${entry.username}`);
  assert.ok(Number(expiry) > Date.now() / 1000 + 3000, `valid for the TTL: ${entry.username}`);
  // Minted with the secret every node shares: valid on the media node's TURN server.
  assert.equal(entry.credential, createHmac('sha1', turnSecret).update(entry.username).digest('base64'));
  return { entry, call, body: res.body };
}

async function metric(node, key) {
  const res = await api(node.url, '/metrics');
  for (const line of res.text.split('\n')) {
    if (line.startsWith(`${key} `)) return Number(line.slice(key.length + 1));
  }
  return 0;
}

test('a call between guests on two nodes: media through the home node\'s SFU both ways, ICE servers naming its TURN, call:end on both', { timeout: 120_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes, turnSecret } = await clusterFor(t, redis, 2, { media: true });
  const [n1, n2] = nodes;
  // A on node-1 (the chat's home: the media node), B on node-2.
  const { A, B, roomId } = await pairHomedAt(redis, n1, n2);
  const a = A.socket;
  const b = B.socket;
  const entries = await registry(redis);
  assert.ok(entries[n1.name]?.turn && entries[n2.name]?.turn, `both nodes publish their TURN ports: ${JSON.stringify(entries)}`);
  assert.notEqual(entries[n1.name].turn.port, entries[n2.name].turn.port);
  const homeTurn = turnUrls(entries[n1.name]);

  // No call yet: no ICE servers, on either node.
  assertHttpError(await api(n2.url, '/api/ice-servers', { token: B.guest.token }), 409, 'no_call');
  assertHttpError(await api(n1.url, '/api/ice-servers', { token: A.guest.token }), 409, 'no_call');

  // B (remote at the home) calls; A accepts.
  const req = assertOk(await ackOf(b, 'call:request', { video: true }), 'call:request of B on node-2');
  assert.equal(req.roomId, roomId);
  assert.deepEqual(await expectEvent('A (callee)', a, 'call:incoming'), { roomId, video: true });
  // Ringing: B's node knows B's call and names the media node's TURN server.
  const ringing = await iceServersOn(n2, B.guest, turnSecret);
  assert.deepEqual(ringing.entry.urls, homeTurn, 'B asked node-2: node-1\'s TURN server');
  const atHome = await iceServersOn(n1, A.guest, turnSecret);
  assert.deepEqual(atHome.entry.urls, homeTurn);
  assert.equal(atHome.call, ringing.call, 'the same call for both guests');
  // A's request landing on node-2, which holds no socket of A (a load balancer's choice): the
  // session record names A's call and its media node.
  let elsewhere = null;
  for (const deadline = Date.now() + 5000; !elsewhere && Date.now() < deadline;) {
    const res = await api(n2.url, '/api/ice-servers', { token: A.guest.token });
    if (res.status === 200) elsewhere = await iceServersOn(n2, A.guest, turnSecret);
    else await sleep(100);
  }
  assert.ok(elsewhere, 'A\'s /api/ice-servers through node-2 (no socket of A there) never answered 200');
  assert.deepEqual(elsewhere.entry.urls, homeTurn);
  assert.equal(elsewhere.call, ringing.call);
  assert.equal(ringing.body.ttl, atHome.body.ttl);

  const acc = assertOk(await ackOf(a, 'call:accept'), 'call:accept of A');
  assert.equal(acc.roomId, roomId);
  assert.deepEqual(await expectEvent('A', a, 'call:accepted'), { roomId });
  assert.deepEqual(await expectEvent('B', b, 'call:accepted'), { roomId });

  // Accepted: B's ICE servers (asked on node-2) once more; B's peer uses only them (relay only),
  // so its media goes through node-1's TURN server to node-1's SFU, with node-2's credentials.
  const { entry: iceB, call } = await iceServersOn(n2, B.guest, turnSecret);
  assert.equal(call, ringing.call);
  assert.deepEqual(iceB.urls, homeTurn);
  const allocationsBefore = await metric(n1, 'tandem_turn_allocations_total{event="created"}');
  const pa = new CallPeer(a, { name: 'A', media: A_MEDIA });
  const pb = new CallPeer(b, {
    name: 'B',
    media: B_MEDIA,
    config: { iceServers: [{ urls: iceB.urls.filter((u) => u.endsWith('transport=udp')), username: iceB.username, credential: iceB.credential }], iceTransportPolicy: 'relay' },
  });
  t.after(() => { pa.close(); pb.close(); });
  const started = Date.now();
  await Promise.all([pa.offer(), pb.offer()]);
  const state = () => dump(n1, [pa, pb], { a, b });
  await until(() => mediaFlowing(pa, pb), MEDIA_DEADLINE_MS, () => `media did not flow both ways:\n${state()}\nnode-2 log (tail):\n${n2.output().slice(-3000)}`);
  t.diagnostic(`media flowing both ways ${Date.now() - started} ms after the offers; A ${JSON.stringify(pa.summary())}; B ${JSON.stringify(pb.summary())}`);
  for (const p of [pa, pb]) {
    assert.deepEqual(p.errors, [], `${p.name} had signalling errors:\n${state()}`);
    assert.ok(p.answersReceived >= 1, `${p.name} got no webrtc:answer:\n${state()}`);
    assert.ok(p.receiver.kinds.includes('audio') && p.receiver.kinds.includes('video'), `${p.name}: ontrack kinds ${p.receiver.kinds}`);
  }
  // Each gets the partner's media.
  assert.ok(Math.abs(pa.receiver.lastLuma - B_MEDIA.luma) < 25, `A should see B's luma ${B_MEDIA.luma}:\n${state()}`);
  assert.ok(Math.abs(pb.receiver.lastLuma - A_MEDIA.luma) < 25, `B should see A's luma ${A_MEDIA.luma}:\n${state()}`);
  assert.ok(Math.abs(pa.receiver.medianHz() - B_MEDIA.toneHz) < 150, `A should hear B's ${B_MEDIA.toneHz} Hz:\n${state()}`);
  assert.ok(Math.abs(pb.receiver.medianHz() - A_MEDIA.toneHz) < 60, `B should hear A's ${A_MEDIA.toneHz} Hz:\n${state()}`);
  // B's media is relayed by node-1's TURN server (an allocation there), towards node-1's SFU.
  const sel = await selectedPair(pb.pc);
  assert.equal(sel.local?.candidateType, 'relay', `B's selected local candidate: ${JSON.stringify(sel.local)}`);
  assert.equal(sel.remote?.port, Number(entries[n1.name].media.split(':').pop()), `B's selected remote candidate is node-1's SFU: ${JSON.stringify(sel.remote)}`);
  // The TURN workers publish their counters once a second.
  let created = 0;
  await until(
    async () => (created = await metric(n1, 'tandem_turn_allocations_total{event="created"}')) > allocationsBefore,
    5000,
    () => `no allocation on node-1's TURN server: ${created} created, ${allocationsBefore} before`,
  );
  assert.equal(await metric(n2, 'tandem_turn_allocations_total{event="created"}'), 0, 'none on node-2\'s');
  await expectNone(a, 'error', 0);
  await expectNone(b, 'error', 0);

  // A hangs up: both get call:ended hangup; both nodes forget the call.
  assertOk(await ackOf(a, 'call:end'), 'call:end of A');
  assert.deepEqual(await expectEvent('A', a, 'call:ended'), { roomId, reason: 'hangup' });
  assert.deepEqual(await expectEvent('B', b, 'call:ended'), { roomId, reason: 'hangup' });
  assertHttpError(await api(n2.url, '/api/ice-servers', { token: B.guest.token }), 409, 'no_call');
  assertHttpError(await api(n1.url, '/api/ice-servers', { token: A.guest.token }), 409, 'no_call');
  // The SFU stops relaying: A's video stops reaching B.
  await sleep(1000);
  const framesThen = pb.receiver.video;
  await sleep(1500);
  assert.ok(pb.receiver.video - framesThen <= 2, `B still gets A's video after the call ended: ${framesThen} → ${pb.receiver.video}`);
  pa.close();
  pb.close();

  // The chat goes on; a second call, rejected from the remote side, ends on both with `rejected`
  // and B's node forgets it too.
  assertOk(await ackOf(a, 'call:request', { video: false }), 'second call:request of A');
  assert.deepEqual(await expectEvent('B (callee)', b, 'call:incoming'), { roomId, video: false });
  const second = await iceServersOn(n2, B.guest, turnSecret);
  assert.notEqual(second.call, call, 'a new call, a new grant');
  assertOk(await ackOf(b, 'call:reject'), 'call:reject of B');
  assert.deepEqual(await expectEvent('A', a, 'call:ended'), { roomId, reason: 'rejected' });
  assert.deepEqual(await expectEvent('B', b, 'call:ended'), { roomId, reason: 'rejected' });
  assertHttpError(await api(n2.url, '/api/ice-servers', { token: B.guest.token }), 409, 'no_call');

  // A third call ends with the chat (B leaves): hangup for B, partner_left for A, before chat:ended.
  assertOk(await ackOf(b, 'call:request', { video: true }), 'third call:request of B');
  await expectEvent('A (callee)', a, 'call:incoming');
  await iceServersOn(n2, B.guest, turnSecret);
  assertOk(await ackOf(b, 'chat:leave'), 'chat:leave of B');
  assert.deepEqual(await expectEvent('B', b, 'call:ended'), { roomId, reason: 'hangup' });
  assert.deepEqual(await expectEvent('A', a, 'call:ended'), { roomId, reason: 'partner_left' });
  await expectEvent('A', a, 'chat:ended');
  await expectEvent('B', b, 'chat:ended');
  for (const s of [a, b]) {
    const lastCallEnded = s.__log.map((e) => e.event).lastIndexOf('call:ended');
    assert.ok(lastCallEnded < logIndex(s, 'chat:ended'), `call:ended before chat:ended: ${events(s)}`);
  }
  assertHttpError(await api(n2.url, '/api/ice-servers', { token: B.guest.token }), 409, 'no_call');
});

test('a guest whose socket moves to a third node mid-call restarts ICE towards the same media node; the call goes on', { timeout: 120_000 }, async (t) => {
  const redis = await redisFor(t);
  const { nodes, turnSecret } = await clusterFor(t, redis, 3, { media: true, args: ['--grace-period-secs', '20'] });
  const [n1, n2, n3] = nodes;
  const { A, B, roomId } = await pairHomedAt(redis, n1, n2);
  const a = A.socket;
  const b = B.socket;
  const homeTurn = turnUrls((await registry(redis))[n1.name]);

  assertOk(await ackOf(a, 'call:request', { video: true }), 'call:request of A');
  await expectEvent('B (callee)', b, 'call:incoming');
  assertOk(await ackOf(b, 'call:accept'), 'call:accept of B');
  await expectEvent('A', a, 'call:accepted');
  await expectEvent('B', b, 'call:accepted');
  const pa = new CallPeer(a, { name: 'A', media: A_MEDIA });
  const pb = new ResumablePeer(b, { name: 'B', media: B_MEDIA });
  t.after(() => { pa.close(); pb.close(); });
  await Promise.all([pa.offer(), pb.offer()]);
  await until(() => mediaFlowing(pa, pb), MEDIA_DEADLINE_MS, () => `media did not flow both ways before the move:\n${dump(n1, [pa, pb], { a, b })}`);
  const { call } = await iceServersOn(n2, B.guest, turnSecret);
  const oldUfrag = sdpAttr(pb.pc.localDescription.sdp, 'ice-ufrag');

  // B's socket drops and comes back on node-3 (its peer connection stays as it is).
  b.disconnect();
  assert.deepEqual(await expectEvent('A (B away)', a, 'partner:presence'), { roomId, status: 'away' });
  const b3 = await connect(n3.url, B.guest.token, { timeoutMs: WAIT });
  t.after(() => b3.close());
  const est = await expectEvent('B on node-3', b3, 'connection:established');
  assert.equal(est.state, 'in_chat', JSON.stringify(est));
  assert.equal(est.room?.roomId, roomId);
  assert.ok(['connecting', 'connected'].includes(est.room?.call?.state), `room.call after the move: ${JSON.stringify(est)}`);
  assert.deepEqual(await expectEvent('A (B online)', a, 'partner:presence'), { roomId, status: 'online' });
  // Node-3 knows B's call now: the same call, the media node's TURN server.
  const moved = await iceServersOn(n3, B.guest, turnSecret);
  assert.equal(moved.call, call);
  assert.deepEqual(moved.entry.urls, homeTurn);

  // ICE restart on the same peer connection, signalled through node-3 to node-1's SFU.
  pb.rebind(b3);
  const answers = pb.answersReceived;
  const { sdp } = await pb.offerWith({ iceRestart: true });
  assert.notEqual(sdpAttr(sdp, 'ice-ufrag'), oldUfrag, 'a new ICE ufrag');
  await until(() => pb.answersReceived > answers && pb.pc.signalingState === 'stable', WAIT, () => `no answer to the restart:\n${dump(n1, [pa, pb], { a, b: b3 })}`);
  const since = [counts(pa), counts(pb)];
  await until(() => grewBy([pa, pb], since), MEDIA_DEADLINE_MS, () => `media did not keep flowing after the restart:\n${dump(n1, [pa, pb], { a, b: b3 })}`);
  let seen;
  await until(async () => {
    seen = await selectedPair(pb.pc);
    return seen.transport?.iceLocalUsernameFragment === sdpAttr(sdp, 'ice-ufrag') && seen.pair?.responsesReceived > 0;
  }, MEDIA_DEADLINE_MS, () => `B's transport is not on the restarted ICE session: ${JSON.stringify(seen)}`);
  assert.deepEqual([...pa.errors, ...pb.errors], [], `signalling errors:\n${dump(n1, [pa, pb], { a, b: b3 })}`);
  await expectNone(a, 'call:ended', 0);
  await expectNone(b3, 'call:ended', 0);

  // B hangs up from node-3: both get call:ended; node-3 and node-2 (B's first node) forget it.
  assertOk(await ackOf(b3, 'call:end'), 'call:end of B on node-3');
  assert.deepEqual(await expectEvent('A', a, 'call:ended'), { roomId, reason: 'hangup' });
  assert.deepEqual(await expectEvent('B on node-3', b3, 'call:ended'), { roomId, reason: 'hangup' });
  assertHttpError(await api(n3.url, '/api/ice-servers', { token: B.guest.token }), 409, 'no_call');
  assertHttpError(await api(n2.url, '/api/ice-servers', { token: B.guest.token }), 409, 'no_call');
});
