// Calls: call:request/accept/reject/end, the webrtc:* negotiation with tandem's media server and
// real media through it (an independent WebRTC stack, @roamhq/wrtc, with synthetic audio and
// video), how calls end, and the refusals. See docs/protocol.md, "Calls".
//
// Every server here is started with `{ media: true }`: media on its own loopback UDP port, ICE
// candidates on 127.0.0.1, no ICE-TCP, one media thread.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { serverFor, connect, waitFor, expectNone, emitAck, assertOk, assertRefused, guestSocket, pair, sendText, sleep } from './harness.mjs';
import { mediaPeer, until } from './media.mjs';
import { request, accept, offeringPeers, logIndex, events, dump, mediaFlowing, A_MEDIA, B_MEDIA } from './call-helpers.mjs';

const MEDIA_DEADLINE_MS = 20_000;

/** The SDP of a real offer (audio + video) from a local peer connection closed right after. */
async function realOfferSdp() {
  const local = mediaPeer({ start: false });
  try {
    return (await local.pc.createOffer()).sdp;
  } finally {
    local.close();
  }
}

/** Accepted call → both peers offer and get media flowing; resolves with [pa, pb]. */
async function connectMedia(t, server, a, b) {
  const [pa, pb] = await offeringPeers(t, a, b);
  await until(() => mediaFlowing(pa, pb), MEDIA_DEADLINE_MS, () => `media did not flow both ways:\n${dump(server, [pa, pb], { a, b })}`);
  return [pa, pb];
}

test('a video call: each side gets the partner\'s audio and video through tandem; chat:leave ends it (hangup / partner_left)', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { a, b, roomId } = await pair(server.url);
  await request(a, b, roomId, true);
  await accept(a, b, roomId);
  const started = Date.now();
  const [pa, pb] = await connectMedia(t, server, a, b);
  t.diagnostic(`media flowing both ways ${Date.now() - started} ms after the offers; A ${JSON.stringify(pa.summary())}; B ${JSON.stringify(pb.summary())}`);
  const state = () => dump(server, [pa, pb], { a, b });

  for (const p of [pa, pb]) {
    assert.deepEqual(p.errors, [], `${p.name} had signalling errors:\n${state()}`);
    assert.ok(p.answersReceived >= 1, `${p.name} got no webrtc:answer:\n${state()}`);
    assert.ok(p.receiver.kinds.includes('audio') && p.receiver.kinds.includes('video'), `${p.name}: ontrack kinds ${p.receiver.kinds}`);
    assert.equal(p.pc.connectionState, 'connected');
  }
  // It is the partner's media: B's grey level and tone at A, A's at B.
  assert.ok(Math.abs(pa.receiver.lastLuma - B_MEDIA.luma) < 25, `A should see B's luma ${B_MEDIA.luma}:\n${state()}`);
  assert.ok(Math.abs(pb.receiver.lastLuma - A_MEDIA.luma) < 25, `B should see A's luma ${A_MEDIA.luma}:\n${state()}`);
  assert.ok(Math.abs(pa.receiver.medianHz() - B_MEDIA.toneHz) < 150, `A should hear B's ${B_MEDIA.toneHz} Hz:\n${state()}`);
  assert.ok(Math.abs(pb.receiver.medianHz() - A_MEDIA.toneHz) < 60, `B should hear A's ${A_MEDIA.toneHz} Hz:\n${state()}`);
  await expectNone(a, 'error', 0);
  await expectNone(b, 'error', 0);

  // A leaves the chat: the call ends first (A: hangup, B: partner_left), then the chat.
  assert.deepEqual(assertOk(await emitAck(a, 'chat:leave'), 'chat:leave').state, 'online');
  assert.deepEqual(await waitFor(a, 'call:ended'), { roomId, reason: 'hangup' });
  assert.deepEqual(await waitFor(b, 'call:ended'), { roomId, reason: 'partner_left' });
  await waitFor(a, 'chat:ended');
  await waitFor(b, 'chat:ended');
  for (const s of [a, b]) {
    assert.ok(logIndex(s, 'call:ended') < logIndex(s, 'chat:ended'), `call:ended must come before chat:ended: ${events(s)}`);
  }
  // The server stops relaying: B's video stops (A's peer connection is still open and sending).
  await sleep(1000);
  const framesThen = pb.receiver.video;
  await sleep(1500);
  assert.ok(pb.receiver.video - framesThen <= 2, `B still gets A's video after the call ended: ${framesThen} → ${pb.receiver.video}`);
  // The call is gone.
  assertRefused(await emitAck(a, 'call:end'), 'not_in_chat', 'call:end after leaving');
});

test('call:end during a connected call: both get call:ended hangup; the chat goes on and a new call may ring (and be cancelled)', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { a, b, roomId } = await pair(server.url);
  await request(a, b, roomId, true);
  await accept(a, b, roomId);
  const [pa, pb] = await connectMedia(t, server, a, b);
  assert.deepEqual([...pa.errors, ...pb.errors], []);

  assertOk(await emitAck(b, 'call:end'), 'call:end');
  assert.deepEqual(await waitFor(a, 'call:ended'), { roomId, reason: 'hangup' });
  assert.deepEqual(await waitFor(b, 'call:ended'), { roomId, reason: 'hangup' });
  const sdp = pa.pc.localDescription.sdp;
  pa.close();
  pb.close();
  await expectNone(a, 'chat:ended', 0);

  // The chat is still on.
  const msg = await sendText(a, 'still here');
  await waitFor(b, 'chat:message', 5000, (m) => m.id === msg.id);
  assertRefused(await emitAck(a, 'call:end'), 'no_call', 'call:end with no call');
  assertRefused(await emitAck(a, 'webrtc:offer', { sdp }), 'no_call', 'webrtc:offer after the call ended');

  // A new call rings; the caller cancels it with call:end: both get hangup.
  await request(a, b, roomId, false);
  assertOk(await emitAck(a, 'call:end'), 'call:end while ringing');
  assert.deepEqual(await waitFor(a, 'call:ended'), { roomId, reason: 'hangup' });
  assert.deepEqual(await waitFor(b, 'call:ended'), { roomId, reason: 'hangup' });
  assertRefused(await emitAck(b, 'call:accept'), 'no_call', 'call:accept of a cancelled call');
});

test('call:reject: both get call:ended rejected; the rejected call cannot be accepted or negotiated', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { a, b, roomId } = await pair(server.url);
  await request(a, b, roomId, false); // an audio-only call: call:incoming says video:false
  assertOk(await emitAck(b, 'call:reject'), 'call:reject');
  assert.deepEqual(await waitFor(a, 'call:ended'), { roomId, reason: 'rejected' });
  assert.deepEqual(await waitFor(b, 'call:ended'), { roomId, reason: 'rejected' });
  assertRefused(await emitAck(b, 'call:accept'), 'no_call', 'call:accept after reject');
  assertRefused(await emitAck(b, 'call:reject'), 'no_call', 'call:reject after reject');
  assertRefused(await emitAck(a, 'webrtc:offer', { sdp: await realOfferSdp() }), 'no_call', 'webrtc:offer after reject');
  await expectNone(a, 'call:accepted', 0);
  await expectNone(b, 'call:accepted', 0);
  // The chat goes on and B may call back.
  await request(b, a, roomId, true);
  assertOk(await emitAck(a, 'call:reject'), 'call:reject (other way)');
  assert.deepEqual(await waitFor(a, 'call:ended'), { roomId, reason: 'rejected' });
  assert.deepEqual(await waitFor(b, 'call:ended'), { roomId, reason: 'rejected' });
});

test('call refusals come through the ack ({ ok:false, error:{ code } }); without an ack as the error event', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { url } = server;
  // A real offer, so that no_call refusals are not about the description.
  const sdp = await realOfferSdp();

  // Not in a chat.
  const C = await guestSocket(url);
  assertRefused(await emitAck(C.socket, 'call:request', { video: true }), 'not_in_chat', 'call:request outside a chat');
  assertRefused(await emitAck(C.socket, 'call:accept'), 'not_in_chat', 'call:accept outside a chat');
  assertRefused(await emitAck(C.socket, 'webrtc:offer', { sdp }), 'not_in_chat', 'webrtc:offer outside a chat');

  const { a, b, roomId } = await pair(url);
  // In a chat, no call.
  assertRefused(await emitAck(b, 'call:accept'), 'no_call', 'call:accept with no call');
  assertRefused(await emitAck(b, 'call:reject'), 'no_call', 'call:reject with no call');
  assertRefused(await emitAck(a, 'call:end'), 'no_call', 'call:end with no call');
  assertRefused(await emitAck(a, 'webrtc:offer', { sdp }), 'no_call', 'webrtc:offer with no call');
  assertRefused(
    await emitAck(a, 'webrtc:ice-candidate', { candidate: 'candidate:1 1 udp 2122194687 127.0.0.1 50000 typ host', sdpMid: '0', sdpMLineIndex: 0 }),
    'no_call',
    'webrtc:ice-candidate with no call',
  );
  assertRefused(await emitAck(a, 'call:request', {}), 'invalid_payload', 'call:request without video');
  assertRefused(await emitAck(a, 'call:request', { video: 'yes' }), 'invalid_payload', 'call:request with a string video');
  await expectNone(b, 'call:incoming', 100);

  // Without an ack: the error event { code, message, event }, and nothing else.
  b.emit('call:accept');
  const err = await waitFor(b, 'error');
  assert.equal(err.code, 'no_call', JSON.stringify(err));
  assert.equal(err.event, 'call:accept', JSON.stringify(err));
  assert.equal(typeof err.message, 'string');
  assert.ok(err.message.length > 0);

  // Ringing: a second request (from either side) is call_in_progress; offers and the caller's
  // own accept are no_call until the callee accepts.
  await request(a, b, roomId, true);
  assertRefused(await emitAck(a, 'call:request', { video: true }), 'call_in_progress', 'second call:request while ringing');
  assertRefused(await emitAck(b, 'call:request', { video: false }), 'call_in_progress', 'callee call:request while ringing');
  assertRefused(await emitAck(a, 'webrtc:offer', { sdp }), 'no_call', 'webrtc:offer before the call is accepted');
  assertRefused(await emitAck(b, 'webrtc:offer', { sdp }), 'no_call', 'callee webrtc:offer before accepting');
  assertRefused(await emitAck(a, 'call:accept'), 'no_call', 'the caller accepting its own call');
  await expectNone(b, 'call:incoming', 100); // the refused requests did not ring again

  // Accepted: bad descriptions and candidates.
  await accept(a, b, roomId);
  assertRefused(await emitAck(a, 'webrtc:offer', { sdp: 'garbage' }), 'invalid_sdp', 'webrtc:offer garbage');
  assertRefused(await emitAck(a, 'webrtc:offer', {}), 'invalid_sdp', 'webrtc:offer without sdp');
  assertRefused(await emitAck(a, 'webrtc:offer', { sdp: 'v=0\r\n' }), 'invalid_sdp', 'webrtc:offer without an m= line');
  assertRefused(await emitAck(a, 'webrtc:answer', { sdp }), 'invalid_sdp', 'webrtc:answer when no server offer awaits one');
  assertRefused(await emitAck(a, 'webrtc:ice-candidate', { candidate: 'not a candidate' }), 'invalid_candidate', 'malformed candidate');
  assertRefused(await emitAck(a, 'webrtc:ice-candidate', { candidate: 5 }), 'invalid_payload', 'numeric candidate');
  assertRefused(await emitAck(a, 'webrtc:ice-candidate', { candidate: '', sdpMLineIndex: 300 }), 'invalid_candidate', 'sdpMLineIndex 300');
  await expectNone(a, 'error', 0);
  await expectNone(a, 'webrtc:answer', 0);

  // An offer that passes the syntactic check but that the media server cannot use: ack ok, then
  // the error event { code: invalid_sdp, event: webrtc:offer }.
  assertOk(await emitAck(b, 'webrtc:offer', { sdp: 'v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n' }), 'webrtc:offer (unusable)');
  const bad = await waitFor(b, 'error', 5000);
  assert.equal(bad.code, 'invalid_sdp', JSON.stringify(bad));
  assert.equal(bad.event, 'webrtc:offer', JSON.stringify(bad));

  // None of that ended the call.
  await expectNone(a, 'call:ended', 0);
  await expectNone(b, 'call:ended', 0);
  assertOk(await emitAck(a, 'call:end'), 'call:end');
  assert.deepEqual(await waitFor(b, 'call:ended'), { roomId, reason: 'hangup' });
});

test('a call nobody accepts ends after the ring timeout: both get call:ended timeout', async (t) => {
  const server = await serverFor(t, ['--call-ring-timeout-secs', '2'], { media: true });
  const { a, b, roomId } = await pair(server.url);
  const t0 = Date.now();
  await request(a, b, roomId, true);
  assert.deepEqual(await waitFor(a, 'call:ended', 8000), { roomId, reason: 'timeout' });
  const elapsed = Date.now() - t0;
  assert.deepEqual(await waitFor(b, 'call:ended', 2000), { roomId, reason: 'timeout' });
  assert.ok(elapsed >= 1500 && elapsed <= 6000, `call:ended timeout came after ${elapsed} ms, expected ~2000`);
  assertRefused(await emitAck(b, 'call:accept'), 'no_call', 'call:accept after the timeout');
  await expectNone(a, 'call:accepted', 0);
  // A new call can ring again afterwards.
  await request(a, b, roomId, true);
  await accept(a, b, roomId);
  assertOk(await emitAck(a, 'call:end'));
});

test('a call is part of the chat state: a new socket of either guest sees it in connection:established (calling / ringing / connecting)', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { a, b, ga, gb, roomId } = await pair(server.url);
  await request(a, b, roomId, true);
  const seen = async (guest) => {
    const s = await connect(server.url, guest.token);
    const est = await waitFor(s, 'connection:established');
    s.close();
    return est;
  };
  let est = await seen(ga);
  assert.equal(est.state, 'in_chat');
  assert.equal(est.room?.roomId, roomId);
  assert.deepEqual(est.room?.call, { state: 'calling', video: true }, JSON.stringify(est));
  est = await seen(gb);
  assert.deepEqual(est.room?.call, { state: 'ringing', video: true }, JSON.stringify(est));
  await accept(a, b, roomId);
  est = await seen(ga);
  assert.deepEqual(est.room?.call, { state: 'connecting', video: true }, JSON.stringify(est));
  assertOk(await emitAck(a, 'call:end'));
  await waitFor(b, 'call:ended');
  est = await seen(gb);
  assert.equal(est.room?.roomId, roomId);
  assert.equal(est.room?.call, undefined, `no call after call:ended: ${JSON.stringify(est)}`);
});

test('match:next during a ringing call: the skipper gets call:ended hangup, the partner partner_left, both before chat:ended', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { a, b, roomId } = await pair(server.url);
  await request(a, b, roomId, true);
  assertOk(await emitAck(b, 'match:next', {}), 'match:next');
  assert.deepEqual(await waitFor(b, 'call:ended'), { roomId, reason: 'hangup' });
  assert.deepEqual(await waitFor(a, 'call:ended'), { roomId, reason: 'partner_left' });
  assert.equal((await waitFor(a, 'chat:ended')).reason, 'skipped');
  await waitFor(b, 'chat:ended');
  for (const s of [a, b]) {
    assert.ok(logIndex(s, 'call:ended') < logIndex(s, 'chat:ended'), `call:ended must come before chat:ended: ${events(s)}`);
  }
  assertRefused(await emitAck(a, 'call:accept'), 'not_in_chat', 'call:accept after the chat ended');
});
