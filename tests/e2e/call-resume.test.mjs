// A call survives its guest's Socket.IO reconnect (docs/protocol.md, "Calls" → "Reconnects and
// ICE restart", and "Presence and reconnects"): while A's sockets are gone the call stays up and
// B sees A `away`; A comes back with a new socket within the grace period, finds `room.call` in
// `connection:established` and resumes the call with a new `webrtc:offer`, either restarting ICE
// on the same RTCPeerConnection or with a brand new one. A guest who does not come back ends the
// call with `partner_left` for B once the grace period runs out.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { serverFor, connect, waitFor, waitForEntry, expectNone, emitAck, assertOk, assertRefused, pair, received, sleep } from './harness.mjs';
import { CallPeer, until } from './media.mjs';
import {
  request,
  accept,
  offeringPeers,
  A_MEDIA,
  B_MEDIA,
  dump,
  events,
  logIndex,
  mediaFlowing,
  counts,
  grewBy,
  sdpAttr,
  selectedPair,
  ResumablePeer,
} from './call-helpers.mjs';

const MEDIA_DEADLINE_MS = 15_000;
const RESUME_DEADLINE_MS = 10_000;

/**
 * Two guests in a chat with an accepted video call and media flowing both ways. A's peer is a
 * ResumablePeer. Resolves with `{ a, b, ga, gb, roomId, pa, pb }`.
 */
async function connectedCall(t, server) {
  const { a, b, ga, gb, roomId } = await pair(server.url);
  await request(a, b, roomId, true);
  await accept(a, b, roomId);
  const [pa, pb] = await offeringPeers(t, a, b, { PeerA: ResumablePeer });
  await until(() => mediaFlowing(pa, pb), MEDIA_DEADLINE_MS, () => `media did not flow both ways before the reconnect:\n${dump(server, [pa, pb], { a, b })}`);
  assert.deepEqual([...pa.errors, ...pb.errors], [], `signalling errors:\n${dump(server, [pa, pb], { a, b })}`);
  return { a, b, ga, gb, roomId, pa, pb };
}

/** A's socket drops (its peer connection stays as it is): B sees A away, the call does not end. */
async function dropA(server, { a, b, roomId, pa, pb }) {
  a.disconnect();
  assert.deepEqual(await waitFor(b, 'partner:presence', 5000), { roomId, status: 'away' });
  // A couple of seconds away: the call goes on.
  await expectNone(b, 'call:ended', 2000);
  await expectNone(b, 'chat:ended', 0);
  assert.equal(logIndex(b, 'call:ended'), -1, `B got call:ended while A was away: ${events(b)}\n${dump(server, [pa, pb], { a, b })}`);
}

/** A connects again with its token: connection:established carries the room and its call. */
async function reconnectA(t, server, { b, ga, gb, roomId }) {
  const a2 = await connect(server.url, ga.token);
  t.after(() => a2.close());
  const est = await waitFor(a2, 'connection:established');
  assert.equal(est.sessionId, ga.sessionId);
  assert.equal(est.state, 'in_chat', `connection:established after the reconnect: ${JSON.stringify(est)}`);
  assert.equal(est.room?.roomId, roomId, JSON.stringify(est));
  assert.deepEqual(est.room?.partner, { username: gb.username }, JSON.stringify(est));
  assert.ok(est.room?.call && typeof est.room.call === 'object', `no room.call after the reconnect: ${JSON.stringify(est)}`);
  assert.ok(['connecting', 'connected'].includes(est.room.call.state), `room.call.state: ${JSON.stringify(est.room.call)}`);
  assert.equal(est.room.call.video, true, `room.call.video: ${JSON.stringify(est.room.call)}`);
  assert.deepEqual(await waitFor(b, 'partner:presence', 5000), { roomId, status: 'online' });
  return { a2, est };
}

/** `room.call` as a fresh socket of `guest` sees it in connection:established. */
async function callSeenBy(server, guest) {
  const s = await connect(server.url, guest.token);
  try {
    return (await waitFor(s, 'connection:established')).room?.call;
  } finally {
    s.close();
  }
}

/** Waits until a fresh socket of `guest` sees its side of the call `connected`. */
async function untilSideConnected(server, guest, name) {
  let last;
  await until(
    async () => {
      last = await callSeenBy(server, guest);
      return last?.state === 'connected';
    },
    5000,
    () => `${name}'s side of the call is not connected: room.call ${JSON.stringify(last)}`,
    250,
  );
  assert.deepEqual(last, { state: 'connected', video: true });
}

/**
 * The call was resumed, not replaced: B got no new call:incoming after `bMark` (B's log length at
 * the reconnect), and neither A's new socket `a2` nor B got any of `unwanted` (event names).
 */
function assertResumedQuietly(a2, b, bMark, unwanted) {
  assert.ok(!b.__log.slice(bMark).some((e) => e.event === 'call:incoming'), `B got a new call:incoming: ${events(b)}`);
  for (const [name, s] of [['A (new socket)', a2], ['B', b]]) {
    for (const event of unwanted) assert.equal(logIndex(s, event), -1, `${name} got ${event}: ${events(s)}`);
  }
}

test('a guest that reconnects within the grace period resumes the call with an ICE restart', async (t) => {
  // Several media workers, as in production: the restarted ICE session's checks come from new
  // client addresses, which the kernel may hand to any worker's socket.
  const server = await serverFor(t, ['--grace-period-secs', '20', '--rtc-udp-workers', '4'], { media: true });
  const call = await connectedCall(t, server);
  const { a, b, roomId, pa, pb } = call;
  const oldSdp = pa.pc.localDescription.sdp;
  const oldUfrag = sdpAttr(oldSdp, 'ice-ufrag');
  const oldFingerprint = sdpAttr(oldSdp, 'fingerprint');
  const serverUfragBefore = sdpAttr(pa.pc.remoteDescription.sdp, 'ice-ufrag');
  assert.ok(oldUfrag, `no a=ice-ufrag in A's offer:\n${oldSdp}`);
  const before = await selectedPair(pa.pc);
  assert.ok(before.pair, `A has no selected candidate pair before the restart: ${JSON.stringify(before)}`);

  await dropA(server, call);
  // A's peer connection was left alone: the media plane does not depend on the socket.
  const away = [counts(pa), counts(pb)];
  await sleep(500);
  t.diagnostic(`while A is away: A got +${pa.receiver.video - away[0].video} frames, B +${pb.receiver.video - away[1].video} frames in 500 ms`);

  const bMark = b.__log.length; // B's events from here on belong to the resumed call
  const { a2, est } = await reconnectA(t, server, call);
  t.diagnostic(`connection:established after the reconnect: ${JSON.stringify(est)}`);

  // ICE restart on the same RTCPeerConnection, signalled on the new socket.
  pa.rebind(a2);
  const answersBefore = pa.answersReceived;
  const candidatesBefore = pa.localCandidates;
  const restartedAt = Date.now();
  const { sdp: newSdp } = await pa.offerWith({ iceRestart: true });
  const newUfrag = sdpAttr(newSdp, 'ice-ufrag');
  assert.ok(newUfrag, `no a=ice-ufrag in A's restart offer:\n${newSdp}`);
  assert.notEqual(newUfrag, oldUfrag, 'the restart offer must carry a new ICE ufrag');
  assert.equal(sdpAttr(newSdp, 'fingerprint'), oldFingerprint, 'same peer connection, same DTLS fingerprint');
  await until(
    () => pa.answersReceived > answersBefore && pa.pc.signalingState === 'stable',
    5000,
    () => `no webrtc:answer applied after the ICE-restart offer:\n${dump(server, [pa, pb], { a: a2, b })}`,
  );
  // The restart gathered new candidates, trickled (and acknowledged) on the new socket.
  await until(() => pa.localCandidates > candidatesBefore, 5000, () => `A gathered no candidates for the restart:\n${pa.describe()}`);
  assert.deepEqual(pa.errors, [], `A's signalling errors after the restart:\n${dump(server, [pa, pb], { a: a2, b })}`);
  assert.equal(sdpAttr(pa.pc.localDescription.sdp, 'ice-ufrag'), newUfrag, "A's local description has the new ufrag");
  t.diagnostic(`A's ufrag ${oldUfrag} → ${newUfrag}; the server's ufrag ${serverUfragBefore} → ${sdpAttr(pa.pc.remoteDescription.sdp, 'ice-ufrag')}`);

  // Media keeps flowing both ways after the answer, on the restarted ICE session.
  const since = [counts(pa), counts(pb)];
  await until(
    () => grewBy([pa, pb], since),
    RESUME_DEADLINE_MS,
    () => `media did not keep flowing both ways after the ICE restart (counts at the answer: ${JSON.stringify(since)}):\n${dump(server, [pa, pb], { a: a2, b })}`,
  );
  t.diagnostic(`media grew on both sides ${Date.now() - restartedAt} ms after the restart offer`);
  // The ICE agent is on the new credentials and a new candidate pair, checked successfully
  // against the server, is the selected one.
  let seen;
  const after = await until(
    async () => {
      seen = await selectedPair(pa.pc);
      const ok =
        seen.transport?.iceLocalUsernameFragment === newUfrag &&
        seen.pair &&
        seen.pair.id !== before.pair?.id && // a pair of the restart's new candidates…
        seen.pair.responsesReceived > 0; // …that the server answered (with the new credentials)
      return ok ? seen : null;
    },
    // The old pair carries media until a new one is checked and nominated: on a box busy with
    // other work that took more than 5 s once (media flowed, the new pair was not yet chosen).
    RESUME_DEADLINE_MS,
    () => `A's transport is not on the restarted ICE session (ufrag ${newUfrag}): ${JSON.stringify(seen)}`,
  );
  t.diagnostic(`selected pair before ${before.pair?.id} (ufrag ${before.transport?.iceLocalUsernameFragment}), after ${after.pair.id} (ufrag ${after.transport.iceLocalUsernameFragment})`);
  assert.equal(pa.pc.connectionState, 'connected');
  assert.equal(pb.pc.connectionState, 'connected');
  await untilSideConnected(server, call.ga, 'A');
  // Still the partner's media.
  assert.ok(Math.abs(pa.receiver.lastLuma - B_MEDIA.luma) < 25, `A should see B's luma ${B_MEDIA.luma}: ${pa.receiver.lastLuma}`);
  assert.ok(Math.abs(pb.receiver.lastLuma - A_MEDIA.luma) < 25, `B should see A's luma ${A_MEDIA.luma}: ${pb.receiver.lastLuma}`);

  // No new call was needed and nothing ended.
  assertResumedQuietly(a2, b, bMark, ['call:ended', 'chat:ended', 'error']);
  assert.deepEqual([...pa.errors, ...pb.errors], []);

  // The resumed call still ends normally.
  assertOk(await emitAck(a2, 'call:end'), 'call:end');
  assert.deepEqual(await waitFor(b, 'call:ended'), { roomId, reason: 'hangup' });
  assert.deepEqual(await waitFor(a2, 'call:ended'), { roomId, reason: 'hangup' });
});

test('a guest that reconnects within the grace period resumes the call with a new peer connection', async (t) => {
  const server = await serverFor(t, ['--grace-period-secs', '20'], { media: true });
  const call = await connectedCall(t, server);
  const { b, roomId, pa, pb } = call;
  const oldFingerprint = sdpAttr(pa.pc.localDescription.sdp, 'fingerprint');

  await dropA(server, call);
  const bMark = b.__log.length;
  const { a2 } = await reconnectA(t, server, call);

  // A replaces its peer connection: the old one is closed first (its DTLS close reaches the
  // server), then a new one offers on the new socket, sending a different tone and grey level so
  // that B can tell the new media from the old. Closing the old connection must not end the call.
  const A2_MEDIA = { toneHz: 500, luma: 110 };
  pa.close();
  await expectNone(b, 'call:ended', 1000);
  await expectNone(a2, 'call:ended', 0);
  const pa2 = new CallPeer(a2, { name: 'A2', media: A2_MEDIA });
  t.after(() => pa2.close());
  await pa2.offer();
  const newFingerprint = sdpAttr(pa2.pc.localDescription.sdp, 'fingerprint');
  assert.ok(newFingerprint && oldFingerprint, 'both offers carry a DTLS fingerprint');
  assert.notEqual(newFingerprint, oldFingerprint, 'a new peer connection has a new DTLS fingerprint');
  await until(
    () => pa2.answersReceived >= 1 && pa2.pc.signalingState === 'stable',
    5000,
    () => `A2 got no webrtc:answer:\n${dump(server, [pa2, pb], { a: a2, b })}`,
  );

  // Counted from the answer on: B's audio and video (on the same receivers as before the
  // reconnect) must both grow again, and A2 must get B's.
  const since = [counts(pa2), counts(pb)];
  await until(
    () => grewBy([pa2, pb], since),
    MEDIA_DEADLINE_MS,
    () => `media did not flow both ways after A replaced its peer connection (counts at the answer: ${JSON.stringify(since)}):\n${dump(server, [pa2, pb], { a: a2, b })}`,
  );
  assert.ok(pa2.receiver.kinds.includes('audio') && pa2.receiver.kinds.includes('video'), `A2: ontrack kinds ${pa2.receiver.kinds}`);
  // B now sees and hears the new peer connection's media; A2 gets B's.
  await until(
    () => Math.abs(pb.receiver.lastLuma - A2_MEDIA.luma) < 25 && Math.abs(pb.receiver.medianHz() - A2_MEDIA.toneHz) < 60,
    5000,
    () => `B should see A2's luma ${A2_MEDIA.luma} and hear its ${A2_MEDIA.toneHz} Hz, gets luma ${pb.receiver.lastLuma}, ${pb.receiver.medianHz()} Hz:\n${dump(server, [pa2, pb], { a: a2, b })}`,
  );
  assert.ok(Math.abs(pa2.receiver.lastLuma - B_MEDIA.luma) < 25, `A2 should see B's luma ${B_MEDIA.luma}: ${pa2.receiver.lastLuma}`);
  assert.equal(pa2.pc.connectionState, 'connected');
  assert.equal(pb.pc.connectionState, 'connected');
  await untilSideConnected(server, call.ga, 'A');
  assert.deepEqual([...pa2.errors, ...pb.errors], [], `signalling errors:\n${dump(server, [pa2, pb], { a: a2, b })}`);
  assertResumedQuietly(a2, b, bMark, ['call:ended', 'error']);

  assertOk(await emitAck(b, 'call:end'), 'call:end');
  assert.deepEqual(await waitFor(a2, 'call:ended'), { roomId, reason: 'hangup' });
  assert.deepEqual(await waitFor(b, 'call:ended'), { roomId, reason: 'hangup' });
});

test('a guest that does not come back within the grace period: B gets call:ended partner_left, then chat:ended', async (t) => {
  const server = await serverFor(t, ['--grace-period-secs', '2'], { media: true });
  const call = await connectedCall(t, server);
  const { a, b, roomId, pa, pb } = call;

  const droppedAt = Date.now();
  a.disconnect(); // and never comes back; its peer connection stays open and keeps sending
  assert.deepEqual(await waitFor(b, 'partner:presence', 5000), { roomId, status: 'away' });
  const ended = await waitForEntry(b, 'call:ended', 8000);
  assert.deepEqual(ended.payload, { roomId, reason: 'partner_left' });
  assert.ok(ended.at - droppedAt >= 1500, `call:ended came ${ended.at - droppedAt} ms after the drop, inside the 2 s grace period`);
  assert.deepEqual(await waitFor(b, 'chat:ended', 3000), { roomId, reason: 'disconnected' });
  assert.ok(logIndex(b, 'call:ended') < logIndex(b, 'chat:ended'), `call:ended must come before chat:ended: ${events(b)}`);
  assert.equal(received(b, 'call:ended').length, 1, `one call:ended: ${events(b)}`);

  // The server stops relaying A's media to B.
  await sleep(1000);
  const framesThen = pb.receiver.video;
  await sleep(1500);
  assert.ok(pb.receiver.video - framesThen <= 2, `B still gets A's video after the call ended: ${framesThen} → ${pb.receiver.video}\n${dump(server, [pa, pb], { a, b })}`);
  assertRefused(await emitAck(b, 'call:end'), 'not_in_chat', 'call:end after the chat ended');
});
