// Calls relayed through tandem's bundled TURN server, as a browser behind a UDP-blocking firewall
// or a symmetric NAT would make them: both pages use `iceTransportPolicy: "relay"` with the ICE
// servers tandem hands out (GET /api/ice-servers, used by the web client as is), kept to one TURN
// transport per run — `turn:` over UDP, `turn:?transport=tcp`, `turns:` (TLS). getStats() must
// show a relay candidate pair over that transport, still ending at tandem's media port, and the
// partner's video decoding at a real frame rate.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serverFor, freePort } from '../harness.mjs';
import {
  launchBrowser, guestFor, start, waitView, waitCall, screenshot, pcStats, inbound, selectedPair, summarize, report,
  sleep, WAIT_MS,
  until,
} from './browser.mjs';

// Chromium verifies the certificate of a `turns:` server. The test gives tandem a certificate
// (made here with openssl, --turn-cert/--turn-key) and tells this browser to trust exactly that
// key (--ignore-certificate-errors-spki-list), as a real deployment trusts its CA-issued one.
const certDir = mkdtempSync(join(tmpdir(), 'tandem-turn-cert-'));
const CERT = join(certDir, 'cert.pem');
const KEY = join(certDir, 'key.pem');
execFileSync('openssl', [
  'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
  '-keyout', KEY, '-out', CERT, '-days', '2', '-subj', '/CN=127.0.0.1',
  '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
], { stdio: 'ignore' });
const spki = execFileSync('sh', ['-c',
  `openssl x509 -in '${CERT}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`,
]).toString().trim();

let b;
before(async () => {
  b = await launchBrowser([`--ignore-certificate-errors-spki-list=${spki}`]);
});
after(async () => {
  await b?.close();
  rmSync(certDir, { recursive: true, force: true });
});

const FAKE_CAMERA_FPS = 20;
const MEASURE_MS = 4000;

/** Init script: every RTCPeerConnection is relay-only and keeps only the TURN URLs of `mode`. */
function relayOnly(mode) {
  const keep = (url) =>
    mode === 'tls' ? url.startsWith('turns:') : url.startsWith('turn:') && url.endsWith(`transport=${mode}`);
  const Prev = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Prev {
    constructor(cfg = {}, ...rest) {
      const iceServers = (cfg.iceServers || [])
        .map((s) => ({ ...s, urls: [].concat(s.urls).filter(keep) }))
        .filter((s) => s.urls.length > 0);
      window.__relayServers = iceServers;
      super({ ...cfg, iceServers, iceTransportPolicy: 'relay' }, ...rest);
    }
  };
}


for (const [mode, relayProtocol] of [['udp', 'udp'], ['tcp', 'tcp'], ['tls', 'tls']]) {
  test(`a relay-only video call over TURN ${mode.toUpperCase()}: relay candidate pair, video decoding`, async (t) => {
    const server = await serverFor(
      t,
      [
        '--turn-port', String(await freePort()), '--turn-tls-port', String(await freePort()),
        '--turn-relay-ports', '21000-21999', '--turn-cert', CERT, '--turn-key', KEY,
      ],
      { media: true },
    );
    const guests = [];
    for (const name of ['A', 'B']) {
      const g = await guestFor(t, b, server, { name, open: false });
      await g.context.addInitScript(relayOnly, mode);
      await g.page.goto(`${server.url}/`, { waitUntil: 'load' });
      guests.push(g);
    }
    const [A, B] = guests;
    await start(A, `Relay${mode}A`);
    await waitView(A, 'searching');
    await start(B, `Relay${mode}B`);
    await waitView(A, 'chat');
    await waitView(B, 'chat');

    await A.page.click('#call-video');
    await waitCall(B, 'ringing');
    await B.page.click('#call-accept');
    for (const g of guests) {
      await waitCall(g, 'connected', 30_000).catch(async (err) => {
        throw new Error(`${err.message}\n${summarize(await pcStats(g))}\n${await report(g)}`);
      });
    }
    for (const g of guests) {
      const servers = await g.page.evaluate(() => window.__relayServers);
      assert.equal(servers?.length, 1, `${g.name} got one TURN server for ${mode}: ${JSON.stringify(servers)}`);
      await until(
        async () => (inbound(await pcStats(g), 'video')?.framesDecoded ?? 0) > 0,
        WAIT_MS,
        async () => `${g.name} decodes no video over TURN ${mode}: ${summarize(await pcStats(g))}`,
      );
    }
    await sleep(1000);
    const s0 = await Promise.all(guests.map(pcStats));
    await sleep(MEASURE_MS);
    const s1 = await Promise.all(guests.map(pcStats));
    guests.forEach((g, i) => {
      const { pair, local, remote } = selectedPair(s1[i]);
      assert.ok(pair && local && remote, `${g.name}: no selected pair: ${summarize(s1[i])}`);
      assert.equal(local.candidateType, 'relay', `${g.name}: local candidate ${JSON.stringify(local)}`);
      assert.equal(local.relayProtocol, relayProtocol, `${g.name}: relay protocol ${JSON.stringify(local)}`);
      assert.equal(remote.address ?? remote.ip, '127.0.0.1', `${g.name}: remote ${JSON.stringify(remote)}`);
      assert.equal(remote.port, server.rtcUdpPort, `${g.name}: the relay must lead to tandem's media port`);
      const v0 = inbound(s0[i], 'video');
      const v1 = inbound(s1[i], 'video');
      const elapsed = (v1.timestamp - v0.timestamp) / 1000;
      const frames = v1.framesDecoded - v0.framesDecoded;
      t.diagnostic(`${g.name} over TURN ${mode}: ${frames} frames in ${elapsed.toFixed(2)} s`);
      assert.ok(frames > 0.5 * FAKE_CAMERA_FPS * elapsed, `${g.name}: ${frames} frames in ${elapsed.toFixed(2)} s`);
      assert.ok((inbound(s1[i], 'audio')?.packetsReceived ?? 0) > 0, `${g.name}: no audio`);
    });
    await screenshot(A.page, `turn-${mode}-call`);
    await A.page.click('#call-hangup');
    await waitCall(B, ['ended', 'idle']);
  });
}
