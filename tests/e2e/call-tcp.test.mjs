// Media over ICE-TCP when UDP is unusable (docs/protocol.md, "Media": the server's answer carries
// a passive ICE-TCP candidate on `--rtc-tcp-port`, RFC 4571 framing). Both clients drop every UDP
// candidate of the server (from its answers and from its trickled `webrtc:ice-candidate` events),
// so the only way to reach the server is the TCP candidate: libwebrtc opens an active ICE-TCP
// connection to it, and audio and video must flow both ways over it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { serverFor, freePort, pair, emitAck, assertOk, waitFor } from './harness.mjs';
import { until } from './media.mjs';
import { request, accept, offeringPeers, A_MEDIA, B_MEDIA, dump, events, logIndex, mediaFlowing, parseCandidate, sdpCandidates, selectedPair, TcpOnlyPeer } from './call-helpers.mjs';

const MEDIA_DEADLINE_MS = 20_000;

test('media over ICE-TCP when UDP is unusable: both clients use only the server\'s passive TCP candidate', async (t) => {
  const tcpPort = await freePort();
  const server = await serverFor(t, ['--rtc-tcp-port', String(tcpPort)], { media: true });
  const { a, b, roomId } = await pair(server.url);
  await request(a, b, roomId, true);
  await accept(a, b, roomId);

  const [pa, pb] = await offeringPeers(t, a, b, { PeerA: TcpOnlyPeer, PeerB: TcpOnlyPeer });
  const state = () => dump(server, [pa, pb], { a, b });

  // First: each answer offers a passive TCP candidate on the chosen port (and a UDP one, dropped).
  for (const p of [pa, pb]) {
    await until(() => p.serverSdps.length >= 1, 5000, () => `${p.name} got no webrtc:answer:\n${state()}`);
    const answer = p.serverSdps[0];
    const cands = sdpCandidates(answer).map((line) => ({ line, ...parseCandidate(line) }));
    const tcp = cands.filter((c) => c.transport === 'tcp' && c.tcptype === 'passive' && c.port === tcpPort);
    assert.ok(
      tcp.length >= 1,
      `${p.name}: the server's answer has no "tcp ... ${tcpPort} typ host tcptype passive" candidate ` +
        `(--rtc-tcp-port ${tcpPort}); its candidates:\n${cands.map((c) => c.line).join('\n') || '(none)'}`,
    );
    assert.equal(tcp[0].ip, '127.0.0.1', `${p.name}: the TCP candidate is on --node-ip: ${tcp[0].line}`);
    assert.ok(cands.some((c) => c.transport === 'udp'), `${p.name}: the answer also has the UDP candidate (which the client drops): ${cands.map((c) => c.line).join(' | ')}`);
    assert.ok(!p.pc.remoteDescription.sdp.split(/\r?\n/).some((l) => l.startsWith('a=candidate:') && parseCandidate(l)?.transport === 'udp'), `${p.name}: a UDP candidate survived the munging`);
  }

  // Media both ways, over TCP only.
  await until(() => mediaFlowing(pa, pb), MEDIA_DEADLINE_MS, () => `media did not flow both ways over ICE-TCP:\n${state()}`);
  for (const p of [pa, pb]) {
    assert.equal(p.pc.connectionState, 'connected', `${p.name}:\n${state()}`);
    assert.deepEqual(p.errors, [], `${p.name} had signalling errors:\n${state()}`);
    assert.ok(p.droppedCandidates >= 1, `${p.name}: no UDP candidate was dropped (is the munging effective?)`);
  }
  // It is the partner's media.
  assert.ok(Math.abs(pa.receiver.lastLuma - B_MEDIA.luma) < 25, `A should see B's luma ${B_MEDIA.luma}: ${pa.receiver.lastLuma}`);
  assert.ok(Math.abs(pb.receiver.lastLuma - A_MEDIA.luma) < 25, `B should see A's luma ${A_MEDIA.luma}: ${pb.receiver.lastLuma}`);

  // The selected candidate pair is TCP on both ends (@roamhq/wrtc exposes the candidates'
  // `protocol` in getStats).
  for (const p of [pa, pb]) {
    const sel = await selectedPair(p.pc);
    assert.ok(sel.pair, `${p.name}: no selected candidate pair in getStats(): ${JSON.stringify(sel)}`);
    assert.equal(sel.remote?.protocol, 'tcp', `${p.name}: selected remote candidate ${JSON.stringify(sel.remote)}`);
    assert.equal(sel.remote?.port, tcpPort, `${p.name}: selected remote candidate ${JSON.stringify(sel.remote)}`);
    assert.equal(sel.local?.protocol, 'tcp', `${p.name}: selected local candidate ${JSON.stringify(sel.local)}`);
    // No UDP candidate of the server reached the ICE agent.
    const stats = await p.pc.getStats();
    const remotes = [...stats.values()].filter((x) => x.type === 'remote-candidate');
    assert.ok(remotes.length >= 1 && remotes.every((x) => x.protocol === 'tcp'), `${p.name}: remote candidates in getStats(): ${JSON.stringify(remotes)}`);
    t.diagnostic(`${p.name}: selected pair local ${sel.local?.protocol} ${sel.local?.address}:${sel.local?.port} (${sel.local?.candidateType}) ↔ remote ${sel.remote?.protocol} ${sel.remote?.address}:${sel.remote?.port}; ${sel.pair.bytesReceived} bytes received`);
  }

  for (const s of [a, b]) {
    assert.equal(logIndex(s, 'call:ended'), -1, `call:ended during the TCP call: ${events(s)}`);
    assert.equal(logIndex(s, 'error'), -1, `error event during the TCP call: ${events(s)}`);
  }
  assertOk(await emitAck(a, 'call:end'), 'call:end');
  assert.deepEqual(await waitFor(b, 'call:ended'), { roomId, reason: 'hangup' });
});
