// A guest in a call sprays valid STUN checks (its own ICE credentials, correctly signed) at the
// media port from 1,000 source ports: tandem learns at most 20 remote candidates for it, drops
// the rest unanswered (counted), the call goes on, and the media thread's CPU afterwards is what
// it was before the spray (no thousand candidate pairs to keep alive).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { createHmac, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { serverFor, pair, api, sleep } from './harness.mjs';
import { until } from './media.mjs';
import { request, accept, offeringPeers, mediaFlowing, dump, sdpAttr } from './call-helpers.mjs';

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function attr(type, value) {
  const pad = (4 - (value.length % 4)) % 4;
  const a = Buffer.alloc(4 + value.length + pad);
  a.writeUInt16BE(type, 0);
  a.writeUInt16BE(value.length, 2);
  value.copy(a, 4);
  return a;
}

/** An ICE connectivity check (RFC 8445) signed with the server's password: USERNAME,
 * PRIORITY, ICE-CONTROLLING, MESSAGE-INTEGRITY, FINGERPRINT. */
function iceCheck(username, password) {
  const prio = Buffer.alloc(4);
  prio.writeUInt32BE(0x6e7f1eff, 0);
  const body = Buffer.concat([
    attr(0x0006, Buffer.from(username)),
    attr(0x0024, prio),
    attr(0x802a, randomBytes(8)),
  ]);
  const header = Buffer.alloc(20);
  header.writeUInt16BE(0x0001, 0);
  header.writeUInt32BE(0x2112a442, 4);
  randomBytes(12).copy(header, 8);
  header.writeUInt16BE(body.length + 24, 2);
  const mac = createHmac('sha1', password).update(Buffer.concat([header, body])).digest();
  const withMi = Buffer.concat([header, body, attr(0x0008, mac)]);
  withMi.writeUInt16BE(body.length + 24 + 8, 2);
  const fp = Buffer.alloc(4);
  fp.writeUInt32BE((crc32(withMi) ^ 0x5354554e) >>> 0, 0);
  return Buffer.concat([withMi, attr(0x8028, fp)]);
}

/** CPU seconds (user + system) of the server's thread named `name`. */
function threadCpu(pid, name) {
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let comm;
    try {
      comm = readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
    } catch {
      continue;
    }
    if (comm !== name) continue;
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime (clock ticks)
  }
  throw new Error(`no thread ${name} in ${pid}`);
}

/** Sends `check` from `n` fresh source ports, `batch` sockets at a time; resolves with how
 * many got an answer. */
async function spray(port, check, n, batch = 100) {
  let answered = 0;
  for (let done = 0; done < n; done += batch) {
    const socks = await Promise.all(Array.from({ length: Math.min(batch, n - done) }, () => new Promise((resolve) => {
      const s = dgram.createSocket('udp4');
      s.on('message', () => { answered += 1; });
      s.on('error', () => {});
      s.bind(0, '127.0.0.1', () => resolve(s));
    })));
    for (const s of socks) s.send(check, port, '127.0.0.1');
    await sleep(100);
    for (const s of socks) s.close();
  }
  return answered;
}

test('a STUN spray from 1,000 source ports: at most 20 remote candidates, the rest dropped, the media thread stays flat', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { a, b, roomId } = await pair(server.url);
  await request(a, b, roomId, false);
  await accept(a, b, roomId);
  const [pa, pb] = await offeringPeers(t, a, b);
  await until(() => mediaFlowing(pa, pb, { audio: 20, video: 0 }), 20_000, () => dump(server, [pa, pb], { a, b }));
  const serverUfrag = sdpAttr(pa.pc.remoteDescription.sdp, 'ice-ufrag');
  const serverPwd = sdpAttr(pa.pc.remoteDescription.sdp, 'ice-pwd');
  const clientUfrag = sdpAttr(pa.pc.localDescription.sdp, 'ice-ufrag');
  assert.ok(serverUfrag && serverPwd && clientUfrag, 'ICE credentials from the SDPs');
  const check = iceCheck(`${serverUfrag}:${clientUfrag}`, serverPwd);

  // A valid check from one new port is answered: the credentials are right.
  assert.equal(await spray(server.rtcUdpPort, check, 1, 1), 1, 'a single check is answered');

  const idle = async () => {
    const c0 = threadCpu(server.pid, 'media-0');
    await sleep(3000);
    return threadCpu(server.pid, 'media-0') - c0;
  };
  const before = await idle();
  const answered = await spray(server.rtcUdpPort, check, 1000);
  const after = await idle();
  const text = (await api(server.url, '/metrics')).text;
  const refused = Number(/tandem_media_remote_candidates_refused_total (\d+)/.exec(text)?.[1] ?? 0);
  t.diagnostic(`spray: ${answered} of 1000 answered, ${refused} refused; media-0 CPU over 3 s: ${before.toFixed(2)} s before, ${after.toFixed(2)} s after`);
  assert.ok(answered <= 20, `answered ${answered}`);
  assert.ok(refused >= 975, `refused ${refused}`);
  // Flat: the call's own media dominates both windows; a thousand candidate pairs would add
  // their checks and bookkeeping to the second.
  assert.ok(after <= before * 1.5 + 0.2, `media-0 CPU ${before.toFixed(2)} s → ${after.toFixed(2)} s`);
  assert.ok(mediaFlowing(pa, pb, { audio: 20, video: 0 }), 'the call goes on');
});
