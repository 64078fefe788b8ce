// Shared files and voice notes (docs/protocol.md, "Files"): POST /api/files, the partner's
// `file` / `voice` message, GET/HEAD on the signed URL, expiry, deletion when the chat ends,
// who may download, tampered URLs, the streamed size cut-off, type sniffing, the storage budget,
// the per-guest limits and the metrics.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  serverFor,
  pair,
  guestSocket,
  createGuest,
  waitFor,
  emitAck,
  assertOk,
  sleep,
  connect,
  api,
  sendText,
} from './harness.mjs';
import { png, PDF, ogg, HTML, SVG } from './fixtures.mjs';

// ---- helpers ------------------------------------------------------------------------------

/** POST /api/files with a FormData of `fields` and one `file` part. */
async function upload(url, token, { bytes, type, name, fields = {}, headers = {} }) {
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  if (bytes) form.append('file', new Blob([bytes], type === undefined ? {} : { type }), name);
  const h = { ...headers };
  if (token) h.authorization = `Bearer ${token}`;
  const res = await fetch(`${url}/api/files`, { method: 'POST', body: form, headers: h, signal: AbortSignal.timeout(15_000) });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  return { status: res.status, headers: res.headers, body, text };
}

/** POST /api/files with a raw body and content type. */
async function uploadRaw(url, token, body, contentType) {
  const headers = { authorization: `Bearer ${token}` };
  if (contentType) headers['content-type'] = contentType;
  const res = await fetch(`${url}/api/files`, { method: 'POST', body, headers, signal: AbortSignal.timeout(15_000) });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined, text, headers: res.headers };
}

async function download(url, path, token, method = 'GET') {
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  const res = await fetch(`${url}${path}`, { method, headers, signal: AbortSignal.timeout(10_000) });
  const bytes = Buffer.from(await res.arrayBuffer());
  let body;
  try {
    body = JSON.parse(bytes.toString('utf8'));
  } catch {
    body = undefined;
  }
  return { status: res.status, headers: res.headers, bytes, body };
}

function assertError(res, status, code) {
  assert.equal(res.status, status, `expected ${status} ${code}, got ${res.status}: ${res.text ?? res.bytes?.toString()}`);
  assert.equal(res.body?.error?.code, code, `expected code ${code}: ${JSON.stringify(res.body)}`);
  assert.equal(typeof res.body.error.message, 'string');
}

/** The sum of a metric's samples whose labels include `labels` (e.g. 'outcome="ok"'). */
async function metric(url, name, labels = '') {
  const text = await (await fetch(`${url}/metrics`)).text();
  let sum = 0;
  let seen = false;
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.startsWith(name)) continue;
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    if (labels && !(m[2] ?? '').includes(labels)) continue;
    sum += Number(m[3]);
    seen = true;
  }
  assert.ok(seen, `metric ${name}{${labels}} not exported`);
  return sum;
}

async function until(what, fn, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/**
 * Server flags for a storage backend: `memory` as given, `disk` adds `--file-dir` with a fresh
 * directory (removed when the test ends), returned as `dir`.
 */
function storageFlags(t, storage, flags = []) {
  if (storage !== 'disk') return { flags, dir: undefined };
  const dir = mkdtempSync(join(tmpdir(), 'tandem-e2e-files-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return { flags: [...flags, '--file-dir', dir], dir };
}

/** A paired chat whose receiver acks every chat:message. */
async function chat(url) {
  const p = await pair(url);
  p.b.on('chat:message', (_m, ack) => typeof ack === 'function' && ack());
  p.a.on('chat:message', (_m, ack) => typeof ack === 'function' && ack());
  return p;
}

function closeAll(...sockets) {
  for (const s of sockets) s.close();
}

// Hand-made multipart framing, for parts fetch's FormData cannot make (no Content-Type) and for
// bodies written piece by piece.
const BOUNDARY = 'tandem-e2e-7MA4YWxkTrZu0gW';
const MULTIPART = `multipart/form-data; boundary=${BOUNDARY}`;
function filePartHead(filename, type) {
  const ct = type === undefined ? '' : `Content-Type: ${type}\r\n`;
  return Buffer.from(`--${BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="${filename}"\r\n${ct}\r\n`);
}
const FORM_END = Buffer.from(`\r\n--${BOUNDARY}--\r\n`);

/**
 * A POST /api/files over node:http whose body the test writes piece by piece (chunked unless
 * `contentLength` is given). `response` resolves with the answer (or `{ error }` when the
 * connection failed first) and how many body bytes had been written when it arrived.
 */
function streamUpload(url, { token, contentType = MULTIPART, contentLength } = {}) {
  const u = new URL(url);
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (contentType) headers['content-type'] = contentType;
  if (contentLength !== undefined) headers['content-length'] = String(contentLength);
  const req = http.request({ host: u.hostname, port: u.port, path: '/api/files', method: 'POST', headers, agent: false });
  const started = Date.now();
  let written = 0;
  let settled = false;
  const response = new Promise((resolve) => {
    const finish = (r) => {
      if (!settled) {
        settled = true;
        resolve({ ...r, ms: Date.now() - started });
      }
    };
    req.on('response', (res) => {
      const writtenAtResponse = written;
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        let body;
        try {
          body = JSON.parse(text);
        } catch {
          body = undefined;
        }
        finish({ status: res.statusCode, headers: res.headers, body, text, writtenAtResponse });
      });
      res.on('error', (e) => finish({ status: res.statusCode, error: e.code, writtenAtResponse }));
    });
    req.on('error', (e) => setTimeout(() => finish({ error: e.code, writtenAtResponse: written }), 500));
  });
  const up = {
    req,
    response,
    get done() {
      return settled;
    },
    get written() {
      return written;
    },
    /** Writes `chunk`; resolves once node flushed it or the answer arrived. */
    write(chunk) {
      if (settled || req.destroyed) return Promise.resolve();
      written += chunk.length;
      return Promise.race([new Promise((resolve) => req.write(chunk, () => resolve())), response]);
    },
    end(chunk) {
      if (!settled && !req.destroyed) req.end(chunk);
      return response;
    },
    destroy() {
      req.destroy();
    },
  };
  return up;
}

/** Resolves with `p`, or with `{ timedOut: true }` after `ms`. */
function within(p, ms) {
  return Promise.race([p, sleep(ms).then(() => ({ timedOut: true }))]);
}

/** `bytes` zero-padded to `n` bytes. */
function padTo(bytes, n) {
  const b = Buffer.alloc(Math.max(n, bytes.length));
  Buffer.from(bytes).copy(b);
  return b;
}

// Small files of each sniffed type on the allow-list (their magic numbers, then padding).
const JPEG = padTo(Buffer.from('ffd8ffe000104a46494600010100000100010000', 'hex'), 128);
const GIF = Buffer.from('47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b', 'hex');
const WEBP = padTo(Buffer.concat([Buffer.from('RIFF'), Buffer.from([120, 0, 0, 0]), Buffer.from('WEBPVP8 ')]), 128);
const WAV = padTo(
  Buffer.concat([
    Buffer.from('RIFF'),
    Buffer.from([164, 0, 0, 0]),
    Buffer.from('WAVEfmt '),
    Buffer.from('100000000100010044ac000088580100020010006461746180000000', 'hex'),
  ]),
  172,
);
const MP3 = padTo(Buffer.concat([Buffer.from('ID3'), Buffer.from([3, 0, 0, 0, 0, 0, 0]), Buffer.from('fffb9000', 'hex')]), 256);
const mp4 = (brand) => padTo(Buffer.concat([Buffer.from([0, 0, 0, 24]), Buffer.from(`ftyp${brand}`), Buffer.from([0, 0, 2, 0]), Buffer.from(`${brand}mp41`)]), 256);
const MP4 = mp4('isom');
const M4A = mp4('M4A ');
// EBML header with DocType "webm" (infer wants more than 256 bytes).
const WEBM = padTo(Buffer.from('1a45dfa39f4286810142f7810142f2810442f381084282847765626d42878104428581021853806701', 'hex'), 400);

// ---- tests --------------------------------------------------------------------------------

// The tests are independent (a server each) and mostly wait on timers and server shutdowns: four
// at a time keep the file short.
describe('shared files', { concurrency: 2 }, () => {
  test('GET /api/limits tells the configured limits', async (t) => {
    const dflt = await serverFor(t);
    const res = await fetch(`${dflt.url}/api/limits`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { maxFileSize: 10485760, maxVoiceMs: 300000, fileTtl: 3600 });
    const custom = await serverFor(t, ['--max-file-size', '2048', '--max-voice-secs', '10', '--file-ttl', '60']);
    assert.deepEqual(await (await fetch(`${custom.url}/api/limits`)).json(), { maxFileSize: 2048, maxVoiceMs: 10000, fileTtl: 60 });
  });

  test('an image: 201, the partner gets a file message, both can GET and HEAD the same bytes', async (t) => {
    const server = await serverFor(t);
    const { a, b, ga, gb, roomId } = await chat(server.url);
    t.after(() => closeAll(a, b));
    // A second socket of the uploader: "the uploader's sockets get chat:message:sent".
    const a2 = await connect(server.url, ga.token);
    t.after(() => a2.close());
    await waitFor(a2, 'connection:established');
    const bytes = png(16, 16);
    const res = await upload(server.url, ga.token, {
      bytes,
      type: 'image/png',
      name: 'holiday.png',
      fields: { clientId: 'up-1' },
    });
    assert.equal(res.status, 201, res.text);
    assert.match(res.headers.get('content-type'), /^application\/json/);
    const f = res.body;
    assert.deepEqual(
      Object.keys(f).sort(),
      ['category', 'expiresAt', 'fileId', 'messageId', 'mimeType', 'name', 'size', 'timestamp', 'url'],
    );
    assert.match(f.fileId, /^[0-9a-f]+$/);
    assert.equal(f.name, 'holiday.png');
    assert.equal(f.size, bytes.length);
    assert.equal(f.mimeType, 'image/png');
    assert.equal(f.category, 'image');
    const m = new RegExp(`^/api/files/${f.fileId}\\?room=${roomId}&exp=(\\d+)&sig=[0-9a-f]{64}$`).exec(f.url);
    assert.ok(m, `url ${f.url}`);
    // expiresAt: RFC 3339, about --file-ttl (3600 s) away, the same instant as the URL's exp.
    assert.match(f.expiresAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/);
    const expiresMs = Date.parse(f.expiresAt);
    assert.ok(Math.abs(expiresMs - (Date.now() + 3600_000)) < 10_000, `expiresAt ${f.expiresAt}: about an hour away`);
    assert.equal(Math.floor(expiresMs / 1000), Number(m[1]), 'expiresAt and the URL exp agree');
    assert.equal(f.durationMs, undefined);
    assert.match(f.messageId, /^[0-9a-f]+$/);
    assert.ok(Number.isInteger(f.timestamp) && Math.abs(f.timestamp - Date.now()) < 10_000, `timestamp ${f.timestamp}`);

    const msg = await waitFor(b, 'chat:message', 5000, (x) => x.type === 'file');
    assert.equal(msg.id, f.messageId);
    assert.equal(msg.roomId, roomId);
    assert.equal(msg.from, 'partner');
    assert.equal(msg.timestamp, f.timestamp);
    const { messageId: _m, timestamp: _t, ...object } = f;
    assert.deepEqual(msg.content, object);
    for (const s of [a, a2]) {
      const sent = await waitFor(s, 'chat:message:sent', 5000, (x) => x.clientId === 'up-1');
      assert.deepEqual(sent, { clientId: 'up-1', id: f.messageId, timestamp: f.timestamp });
    }
    const delivered = await waitFor(a, 'chat:message:delivered', 5000);
    assert.equal(delivered.id, f.messageId);
    assertOk(await emitAck(b, 'chat:message:read', { id: f.messageId }));
    assert.equal((await waitFor(a, 'chat:message:read')).id, f.messageId);

    const expected = {
      'content-type': 'image/png',
      'content-length': String(bytes.length),
      'content-disposition': `inline; filename="holiday.png"; filename*=UTF-8''holiday.png`,
      'x-content-type-options': 'nosniff',
      'content-security-policy': "default-src 'none'; sandbox",
      'cache-control': 'private, no-store',
      'cross-origin-resource-policy': 'same-origin',
      'referrer-policy': 'no-referrer',
    };
    const pick = (headers) => Object.fromEntries(Object.keys(expected).map((k) => [k, headers.get(k)]));
    for (const token of [gb.token, ga.token]) {
      const got = await download(server.url, f.url, token);
      assert.equal(got.status, 200);
      assert.ok(got.bytes.equals(bytes), 'downloaded bytes differ from the upload');
      assert.deepEqual(pick(got.headers), expected);
    }
    const head = await download(server.url, f.url, gb.token, 'HEAD');
    assert.equal(head.status, 200);
    assert.equal(head.bytes.length, 0);
    assert.deepEqual(pick(head.headers), expected, 'HEAD has the headers of GET');

    assert.ok((await metric(server.url, 'tandem_file_uploads_total', 'category="image",outcome="ok"')) >= 1);
    assert.ok((await metric(server.url, 'tandem_file_downloads_total', 'outcome="ok"')) >= 3);
    assert.equal(await metric(server.url, 'tandem_files_stored'), 1);
    assert.equal(await metric(server.url, 'tandem_file_bytes_stored'), bytes.length);
  });

  test('a PDF is a document served as an attachment; a .txt is text/plain; names are sanitized', async (t) => {
    const server = await serverFor(t, ['--file-uploads-per-min', '100']);
    const { a, b, ga, gb } = await chat(server.url);
    t.after(() => closeAll(a, b));
    const pdf = await upload(server.url, ga.token, { bytes: PDF, type: 'application/pdf', name: 'notes.pdf' });
    assert.equal(pdf.status, 201, pdf.text);
    assert.equal(pdf.body.category, 'document');
    assert.equal(pdf.body.mimeType, 'application/pdf');
    // No clientId field: the uploader's chat:message:sent carries the fileId.
    const sent = await waitFor(a, 'chat:message:sent', 5000, (x) => x.id === pdf.body.messageId);
    assert.equal(sent.clientId, pdf.body.fileId);
    const got = await download(server.url, pdf.body.url, gb.token);
    assert.equal(got.status, 200);
    assert.ok(got.bytes.equals(PDF));
    assert.match(got.headers.get('content-disposition'), /^attachment; filename="notes\.pdf"/);
    assert.equal(got.headers.get('content-type'), 'application/pdf');

    const text = Buffer.from('héllo\nwörld\n', 'utf8');
    const txt = await upload(server.url, ga.token, { bytes: text, type: 'text/plain', name: 'résumé.txt' });
    assert.equal(txt.status, 201, txt.text);
    assert.equal(txt.body.mimeType, 'text/plain; charset=utf-8');
    assert.equal(txt.body.category, 'document');
    const t2 = await download(server.url, txt.body.url, gb.token);
    assert.ok(t2.bytes.equals(text));
    assert.equal(t2.headers.get('content-disposition'), `attachment; filename="r_sum_.txt"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt`);

    const evil = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: '../../etc/pass<wd>|*?.png' });
    assert.equal(evil.status, 201, evil.text);
    assert.equal(evil.body.name, 'passwd.png');
    const quoted = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: '../../etc/pa"ss<wd>.png' });
    assert.equal(quoted.status, 201, quoted.text);
    assert.doesNotMatch(quoted.body.name, /[\/"<>]/);
    assert.match(quoted.body.name, /\.png$/);
    const win = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'C:\\Users\\me\\photo.png' });
    assert.equal(win.body.name, 'photo.png');
    const bare = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'photo' });
    assert.equal(bare.body.name, 'photo.png');
    const long = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: `${'x'.repeat(300)}.png` });
    assert.equal(long.status, 201, long.text);
    assert.ok([...long.body.name].length <= 100, `${long.body.name.length} characters`);
    assert.match(long.body.name, /^x+\.png$/);
    const nothing = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: '<>|?*' });
    assert.equal(nothing.body.name, 'file.png');
    // A tab is the one control character a part header can carry.
    const ctl = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'be\tll.png' });
    assert.equal(ctl.status, 201, ctl.text);
    assert.equal(ctl.body.name, 'bell.png');
  });

  test('voice notes: audio only, durationMs required and at most 5 minutes', async (t) => {
    const server = await serverFor(t, ['--file-uploads-per-min', '100']);
    const { a, b, ga } = await chat(server.url);
    t.after(() => closeAll(a, b));
    const ok = await upload(server.url, ga.token, {
      bytes: ogg(),
      type: 'audio/ogg',
      name: 'voice.ogg',
      fields: { kind: 'voice', durationMs: '4200' },
    });
    assert.equal(ok.status, 201, ok.text);
    assert.equal(ok.body.category, 'audio');
    assert.equal(ok.body.mimeType, 'audio/ogg');
    assert.equal(ok.body.durationMs, 4200);
    const msg = await waitFor(b, 'chat:message', 5000, (m) => m.type === 'voice');
    assert.equal(msg.content.durationMs, 4200);
    assert.equal(msg.id, ok.body.messageId);

    const voice = (fields, bytes = ogg(), type = 'audio/ogg', name = 'v.ogg') =>
      upload(server.url, ga.token, { bytes, type, name, fields: { kind: 'voice', ...fields } });
    assertError(await voice({ durationMs: '300001' }), 400, 'voice_too_long');
    assert.equal((await voice({ durationMs: '300000' })).status, 201);
    assertError(await voice({}), 400, 'invalid_upload');
    assertError(await voice({ durationMs: 'soon' }), 400, 'invalid_upload');
    assertError(await voice({ durationMs: '1000' }, png(), 'image/png', 'v.png'), 415, 'unsupported_type');
    assertError(
      await upload(server.url, ga.token, { bytes: ogg(), type: 'audio/ogg', name: 'v.ogg', fields: { kind: 'song' } }),
      400,
      'invalid_upload',
    );
    // durationMs: a positive integer, only for voice notes.
    assertError(await voice({ durationMs: '0' }), 400, 'invalid_upload');
    assertError(await voice({ durationMs: '-5' }), 400, 'invalid_upload');
    assertError(await voice({ durationMs: '1.5' }), 400, 'invalid_upload');
    assertError(
      await upload(server.url, ga.token, { bytes: ogg(), type: 'audio/ogg', name: 'v.ogg', fields: { kind: 'file', durationMs: '1000' } }),
      400,
      'invalid_upload',
    );
    assertError(
      await upload(server.url, ga.token, { bytes: ogg(), type: 'audio/ogg', name: 'v.ogg', fields: { durationMs: '1000' } }),
      400,
      'invalid_upload',
    );
    // Type first (rule 5), then the length (rule 6).
    assertError(await voice({ durationMs: '300001' }, png(), 'image/png', 'v.png'), 415, 'unsupported_type');
    // A browser's recording: WebM/Opus with codec parameters; a video is no voice note.
    const webm = await voice({ durationMs: '1500' }, WEBM, 'audio/webm;codecs=opus', 'voice.webm');
    assert.equal(webm.status, 201, webm.text);
    assert.equal(webm.body.mimeType, 'audio/webm');
    assert.equal(webm.body.category, 'audio');
    assert.equal(webm.body.durationMs, 1500);
    assert.equal((await waitFor(b, 'chat:message', 5000, (m) => m.id === webm.body.messageId)).type, 'voice');
    assertError(await voice({ durationMs: '1500' }, WEBM, 'video/webm', 'clip.webm'), 415, 'unsupported_type');
    // kind=file (explicit) with audio: a file message, no durationMs.
    const plain = await upload(server.url, ga.token, { bytes: ogg(), type: 'audio/ogg', name: 'song.ogg', fields: { kind: 'file' } });
    assert.equal(plain.status, 201, plain.text);
    assert.equal(plain.body.durationMs, undefined);
    const fileMsg = await waitFor(b, 'chat:message', 5000, (m) => m.id === plain.body.messageId);
    assert.equal(fileMsg.type, 'file');
    assert.equal(fileMsg.content.durationMs, undefined);
    // Voice notes and audio files are attachments (inline is for images only).
    const got = await download(server.url, ok.body.url, ga.token);
    assert.equal(got.status, 200);
    assert.ok(got.bytes.equals(ogg()));
    assert.equal(got.headers.get('content-type'), 'audio/ogg');
    assert.match(got.headers.get('content-disposition'), /^attachment; filename="voice\.ogg"/);
    assert.ok((await metric(server.url, 'tandem_file_uploads_total', 'outcome="voice_too_long"')) >= 1);

    // --max-voice-secs sets the longest voice note.
    const short = await serverFor(t, ['--max-voice-secs', '10']);
    const p = await chat(short.url);
    t.after(() => closeAll(p.a, p.b));
    const shortVoice = (durationMs) =>
      upload(short.url, p.ga.token, { bytes: ogg(), type: 'audio/ogg', name: 'v.ogg', fields: { kind: 'voice', durationMs } });
    assertError(await shortVoice('10001'), 400, 'voice_too_long');
    assert.equal((await shortVoice('10000')).status, 201);
  });

  test('clientId and repeated fields', async (t) => {
    const server = await serverFor(t, ['--file-uploads-per-min', '100']);
    const { a, b, ga } = await chat(server.url);
    t.after(() => closeAll(a, b));
    const withFields = (fields) => upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'a.png', fields });
    assertError(await withFields({ clientId: 'c'.repeat(65) }), 400, 'invalid_upload');
    assertError(await withFields({ clientId: '' }), 400, 'invalid_upload');
    assertError(await withFields({ clientId: 'bad\u0001id' }), 400, 'invalid_upload');
    const id64 = 'é'.repeat(64);
    const ok = await withFields({ clientId: id64 });
    assert.equal(ok.status, 201, ok.text);
    assert.equal((await waitFor(a, 'chat:message:sent', 5000, (x) => x.id === ok.body.messageId)).clientId, id64);
    const twice = new FormData();
    twice.append('kind', 'file');
    twice.append('kind', 'file');
    twice.append('file', new Blob([png()], { type: 'image/png' }), 'a.png');
    const r = await fetch(`${server.url}/api/files`, { method: 'POST', body: twice, headers: { authorization: `Bearer ${ga.token}` } });
    assert.equal(r.status, 400);
    assert.equal((await r.json()).error.code, 'invalid_upload');
  });

  test('only guests in a chat upload; only that chat\'s two guests download', async (t) => {
    const server = await serverFor(t);
    const lone = await guestSocket(server.url);
    t.after(() => lone.socket.close());
    assertError(await upload(server.url, lone.guest.token, { bytes: png(), type: 'image/png', name: 'a.png' }), 409, 'not_in_chat');
    assertError(await upload(server.url, undefined, { bytes: png(), type: 'image/png', name: 'a.png' }), 401, 'unauthorized');
    assertError(await upload(server.url, 'not-a-token', { bytes: png(), type: 'image/png', name: 'a.png' }), 401, 'unauthorized');

    const { a, b, ga } = await chat(server.url);
    t.after(() => closeAll(a, b));
    const up = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'a.png' });
    assert.equal(up.status, 201, up.text);
    assertError(await download(server.url, up.body.url, lone.guest.token), 403, 'forbidden');
    const stranger = await createGuest(server.url);
    assertError(await download(server.url, up.body.url, stranger.token), 403, 'forbidden');
    assertError(await download(server.url, up.body.url, undefined), 401, 'unauthorized');
    assertError(await download(server.url, up.body.url, 'not-a-token'), 401, 'unauthorized');
    assert.equal((await download(server.url, up.body.url, stranger.token, 'HEAD')).status, 403, 'HEAD by a stranger');
    assert.ok((await metric(server.url, 'tandem_file_downloads_total', 'outcome="forbidden"')) >= 3);
    assert.ok((await metric(server.url, 'tandem_file_downloads_total', 'outcome="unauthorized"')) >= 2);
    assert.ok((await metric(server.url, 'tandem_file_uploads_total', 'outcome="not_in_chat"')) >= 1);
    assert.ok((await metric(server.url, 'tandem_file_uploads_total', 'outcome="unauthorized"')) >= 2);
  });

  test('tampered URLs are refused with invalid_signature', async (t) => {
    const server = await serverFor(t);
    const { a, b, ga, gb } = await chat(server.url);
    t.after(() => closeAll(a, b));
    const up = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'a.png' });
    assert.equal(up.status, 201);
    const u = new URL(up.body.url, server.url);
    const flip = (s) => s.slice(0, -1) + (s.at(-1) === '0' ? '1' : '0');
    const variants = [];
    const withParam = (k, v) => {
      const c = new URL(u);
      c.searchParams.set(k, v);
      return c.pathname + c.search;
    };
    variants.push(withParam('sig', flip(u.searchParams.get('sig'))));
    variants.push(withParam('exp', String(Number(u.searchParams.get('exp')) + 3600)));
    variants.push(withParam('room', flip(u.searchParams.get('room'))));
    variants.push(withParam('sig', 'zz'));
    variants.push(`${u.pathname}?room=${u.searchParams.get('room')}&exp=${u.searchParams.get('exp')}`);
    variants.push(`/api/files/${flip(up.body.fileId)}${u.search}`);
    variants.push(withParam('exp', String(Number(u.searchParams.get('exp')) - 7200))); // in the past, not "expired"
    variants.push(withParam('sig', u.searchParams.get('sig').slice(0, 62)));
    variants.push(`${u.pathname}?room=${u.searchParams.get('room')}&sig=${u.searchParams.get('sig')}`);
    variants.push(`${u.pathname}?exp=${u.searchParams.get('exp')}&sig=${u.searchParams.get('sig')}`);
    variants.push(u.pathname);
    variants.push(`/api/files/not-a-file-id${u.search}`);
    // A parameter given twice is a malformed URL, not a second chance.
    variants.push(`${up.body.url}&sig=${flip(u.searchParams.get('sig'))}`);
    variants.push(`${up.body.url}&room=${flip(u.searchParams.get('room'))}`);
    const got = {};
    for (const v of variants) {
      const res = await download(server.url, v, gb.token);
      got[v] = `${res.status} ${res.body?.error?.code ?? res.bytes.toString().slice(0, 60)}`;
    }
    const want = Object.fromEntries(variants.map((v) => [v, '403 invalid_signature']));
    // Without a token, 401 comes first, whatever the URL.
    for (const v of variants.slice(-2)) {
      const res = await download(server.url, v, undefined);
      got[`no token: ${v}`] = `${res.status} ${res.body?.error?.code ?? res.bytes.toString().slice(0, 60)}`;
      want[`no token: ${v}`] = '401 unauthorized';
    }
    assert.deepEqual(got, want);
    // The signature is checked before who is asking, but after the token.
    const stranger = await createGuest(server.url);
    assertError(await download(server.url, variants[0], stranger.token), 403, 'invalid_signature');
    assertError(await download(server.url, variants[0], undefined), 401, 'unauthorized');
    assert.equal((await download(server.url, variants[0], gb.token, 'HEAD')).status, 403, 'HEAD of a tampered URL');
    // The real one still works.
    assert.equal((await download(server.url, up.body.url, gb.token)).status, 200);
    assert.ok((await metric(server.url, 'tandem_file_downloads_total', 'outcome="invalid_signature"')) >= variants.length + 2);
  });

  for (const storage of ['memory', 'disk']) {
    test(`expiry: past --file-ttl the URL answers 410 and the file is swept (${storage})`, async (t) => {
      const { flags, dir } = storageFlags(t, storage, ['--file-ttl', '2']);
      const server = await serverFor(t, flags);
      const { a, b, ga, gb } = await chat(server.url);
      t.after(() => closeAll(a, b));
      const up = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'a.png' });
      assert.equal(up.status, 201);
      assert.ok(Date.parse(up.body.expiresAt) <= Date.now() + 3000, `expiresAt ${up.body.expiresAt}`);
      assert.equal((await download(server.url, up.body.url, gb.token)).status, 200);
      if (dir) assert.equal(readdirSync(dir).length, 1, 'the file is on disk');
      await until('the file to be swept', async () => (await metric(server.url, 'tandem_files_stored')) === 0, 6000);
      await until('the URL to expire', async () => (await download(server.url, up.body.url, gb.token)).status === 410, 3000);
      assertError(await download(server.url, up.body.url, gb.token), 410, 'expired');
      assertError(await download(server.url, up.body.url, ga.token), 410, 'expired');
      // Expiry is checked after the token and the signature, before who is asking.
      const stranger = await createGuest(server.url);
      assertError(await download(server.url, up.body.url, stranger.token), 410, 'expired');
      assertError(await download(server.url, up.body.url, undefined), 401, 'unauthorized');
      assert.ok((await metric(server.url, 'tandem_file_expirations_total')) >= 1);
      assert.ok((await metric(server.url, 'tandem_files_deleted_total', 'reason="expired"')) >= 1);
      assert.equal(await metric(server.url, 'tandem_files_deleted_total', 'reason="chat_ended"'), 0);
      assert.ok((await metric(server.url, 'tandem_file_downloads_total', 'outcome="expired"')) >= 3);
      assert.equal(await metric(server.url, 'tandem_file_bytes_stored'), 0);
      if (dir) await until('the directory to be empty', () => readdirSync(dir).length === 0);
      // The chat goes on; a new upload works and gets a fresh URL.
      const again = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'b.png' });
      assert.equal(again.status, 201, again.text);
      assert.equal((await download(server.url, again.body.url, gb.token)).status, 200);
    });
  }

  for (const storage of ['memory', 'disk']) {
    test(`the chat ends: its files are deleted (${storage})`, async (t) => {
      const { flags, dir } = storageFlags(t, storage);
      const server = await serverFor(t, flags);
      const { a, b, ga, gb } = await chat(server.url);
      t.after(() => closeAll(a, b));
      const ups = [];
      // One file from each side.
      for (const [g, bytes, type, name] of [[ga, png(), 'image/png', 'a.png'], [gb, PDF, 'application/pdf', 'b.pdf']]) {
        const up = await upload(server.url, g.token, { bytes, type, name });
        assert.equal(up.status, 201, up.text);
        ups.push(up.body);
      }
      if (dir) {
        const names = readdirSync(dir);
        assert.equal(names.length, 2, 'two files on disk');
        // Stored under names of the server's own, with the uploaded bytes.
        for (const n of names) assert.doesNotMatch(n, /a\.png|b\.pdf/);
        const contents = names.map((n) => readFileSync(join(dir, n)));
        assert.ok(contents.some((c) => c.equals(png())), 'the PNG is on disk as uploaded');
        assert.ok(contents.some((c) => c.equals(PDF)), 'the PDF is on disk as uploaded');
      }
      assert.equal(await metric(server.url, 'tandem_files_stored'), 2);
      assertOk(await emitAck(b, 'chat:leave'));
      const stranger = await createGuest(server.url);
      for (const f of ups) {
        assertError(await download(server.url, f.url, gb.token), 404, 'not_found');
        assertError(await download(server.url, f.url, ga.token), 404, 'not_found');
        // Gone is checked before who is asking.
        assertError(await download(server.url, f.url, stranger.token), 404, 'not_found');
        assert.equal((await download(server.url, f.url, gb.token, 'HEAD')).status, 404);
      }
      assert.ok((await metric(server.url, 'tandem_file_downloads_total', 'outcome="not_found"')) >= 8);
      assert.equal(await metric(server.url, 'tandem_files_stored'), 0);
      assert.equal(await metric(server.url, 'tandem_file_bytes_stored'), 0);
      assert.equal(await metric(server.url, 'tandem_files_deleted_total', 'reason="chat_ended"'), 2);
      if (dir) await until('the directory to be empty', () => readdirSync(dir).length === 0);
      // Out of the chat, no more uploads.
      assertError(await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'c.png' }), 409, 'not_in_chat');
    });
  }

  test('an oversize upload is cut off at the limit while it streams (413)', async (t) => {
    const server = await serverFor(t, ['--max-file-size', '1048576', '--file-uploads-per-min', '100']);
    const { a, b, ga } = await chat(server.url);
    t.after(() => closeAll(a, b));
    // Chunked (no Content-Length): 40 MiB offered, 64 KiB at a time.
    const total = 40 * 1024 * 1024;
    const result = await new Promise((resolve) => {
      const u = new URL(server.url);
      const boundary = 'tandemBoundary7MA4YWxkTrZu0gW';
      let written = 0;
      let settled = false;
      const req = http.request({
        host: u.hostname,
        port: u.port,
        path: '/api/files',
        method: 'POST',
        headers: { authorization: `Bearer ${ga.token}`, 'content-type': `multipart/form-data; boundary=${boundary}` },
      });
      const finish = (r) => {
        if (!settled) {
          settled = true;
          resolve({ ...r, written });
        }
      };
      req.on('response', (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => finish({ status: res.statusCode, body }));
      });
      req.on('error', (e) => setTimeout(() => finish({ error: e.code }), 500));
      req.write(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n`);
      const piece = Buffer.alloc(64 * 1024, 0x41);
      const pump = () => {
        while (!settled && written < total) {
          written += piece.length;
          if (!req.write(piece)) {
            req.once('drain', pump);
            return;
          }
        }
        if (!settled) req.end(`\r\n--${boundary}--\r\n`);
      };
      pump();
    });
    assert.equal(result.status, 413, JSON.stringify(result));
    assert.equal(JSON.parse(result.body).error.code, 'file_too_large');
    assert.ok(result.written < total / 2, `the answer came only after ${result.written} of ${total} bytes were written`);

    // A Content-Length already over the limit is refused before the body is read: nothing of
    // the body needs to be sent for the answer to come.
    const declared = streamUpload(server.url, { token: ga.token, contentLength: 64 * 1024 * 1024 });
    t.after(() => declared.destroy());
    await declared.write(filePartHead('big.png', 'image/png'));
    const early = await within(declared.response, 3000);
    declared.destroy();
    assert.equal(early.status, 413, `no early answer to a 64 MiB Content-Length: ${JSON.stringify(early)}`);
    assert.equal(early.body?.error?.code, 'file_too_large');
    const big = Buffer.alloc(2 * 1024 * 1024, 0x42);
    png().copy(big);
    const res = await upload(server.url, ga.token, { bytes: big, type: 'image/png', name: 'big.png' });
    assertError(res, 413, 'file_too_large');
    // Just under the limit is fine.
    const fits = png(8, 8, 1024 * 1024 - 200);
    assert.ok(fits.length <= 1048576, `${fits.length}`);
    assert.equal((await upload(server.url, ga.token, { bytes: fits, type: 'image/png', name: 'fits.png' })).status, 201);
    assert.ok((await metric(server.url, 'tandem_file_uploads_total', 'outcome="too_large"')) >= 2);
    assert.equal(await metric(server.url, 'tandem_files_stored'), 1, 'nothing of the refused uploads is kept');
  });

  test('types are sniffed and must match what is declared; bad forms are invalid_upload', async (t) => {
    const server = await serverFor(t, ['--file-uploads-per-min', '100']);
    const { a, b, ga } = await chat(server.url);
    t.after(() => closeAll(a, b));
    const up = (bytes, type, name) => upload(server.url, ga.token, { bytes, type, name });
    assertError(await up(png(), 'application/pdf', 'a.pdf'), 415, 'unsupported_type');
    assertError(await up(HTML, 'image/png', 'x.png'), 415, 'unsupported_type');
    assertError(await up(HTML, 'text/html', 'x.html'), 415, 'unsupported_type');
    assertError(await up(HTML, 'text/plain', 'x.txt'), 415, 'unsupported_type');
    assertError(await up(SVG, 'image/svg+xml', 'x.svg'), 415, 'unsupported_type');
    assertError(await up(Buffer.from([0xff, 0xfe, 0x00, 0x41]), 'text/plain', 'x.txt'), 415, 'unsupported_type');
    assertError(await up(Buffer.from('MZ\x90\x00 an exe'), 'application/octet-stream', 'x.exe'), 415, 'unsupported_type');
    // A generic declared type passes when the extension agrees.
    assert.equal((await up(png(), 'application/octet-stream', 'p.png')).status, 201);
    assert.equal((await up(png(), 'image/png; foo=bar', 'p.png')).status, 201);
    // Empty file, no file part, two file parts, unknown field.
    assertError(await up(Buffer.alloc(0), 'image/png', 'e.png'), 400, 'invalid_upload');
    assertError(await upload(server.url, ga.token, { fields: { clientId: 'x' } }), 400, 'invalid_upload');
    const two = new FormData();
    two.append('file', new Blob([png()], { type: 'image/png' }), 'a.png');
    two.append('file', new Blob([png()], { type: 'image/png' }), 'b.png');
    const r2 = await fetch(`${server.url}/api/files`, { method: 'POST', body: two, headers: { authorization: `Bearer ${ga.token}` } });
    assert.equal(r2.status, 400);
    assert.equal((await r2.json()).error.code, 'invalid_upload');
    assertError(
      await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'a.png', fields: { surprise: '1' } }),
      400,
      'invalid_upload',
    );
    // Malformed multipart bodies and non-multipart bodies.
    assertError(await uploadRaw(server.url, ga.token, 'garbage without any boundary', 'multipart/form-data; boundary=XYZ'), 400, 'invalid_upload');
    assertError(
      await uploadRaw(server.url, ga.token, '--XYZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nabc', 'multipart/form-data; boundary=XYZ'),
      400,
      'invalid_upload',
    );
    assertError(await uploadRaw(server.url, ga.token, '{"file":"x"}', 'application/json'), 400, 'invalid_upload');
    assertError(await uploadRaw(server.url, ga.token, 'x', 'multipart/form-data'), 400, 'invalid_upload');
    assert.ok((await metric(server.url, 'tandem_file_uploads_total', 'outcome="unsupported_type"')) >= 7);
    assert.ok((await metric(server.url, 'tandem_file_uploads_total', 'outcome="invalid_upload"')) >= 6);
  });

  test('the storage budget: 507 storage_full until a chat ends', async (t) => {
    const server = await serverFor(t, ['--file-storage-mb', '1', '--max-file-size', '1048576', '--file-uploads-per-min', '100']);
    const { a, b, ga } = await chat(server.url);
    t.after(() => closeAll(a, b));
    const f = png(8, 8, 400 * 1024);
    assert.equal((await upload(server.url, ga.token, { bytes: f, type: 'image/png', name: '1.png' })).status, 201);
    assert.equal((await upload(server.url, ga.token, { bytes: f, type: 'image/png', name: '2.png' })).status, 201);
    assertError(await upload(server.url, ga.token, { bytes: f, type: 'image/png', name: '3.png' }), 507, 'storage_full');
    assert.equal(await metric(server.url, 'tandem_files_stored'), 2, 'the refused upload left nothing');
    assert.equal(await metric(server.url, 'tandem_file_bytes_stored'), 2 * f.length);
    assertOk(await emitAck(a, 'chat:leave'));
    const next = await chat(server.url);
    t.after(() => closeAll(next.a, next.b));
    assert.equal((await upload(server.url, next.ga.token, { bytes: f, type: 'image/png', name: '4.png' })).status, 201);
    assert.ok((await metric(server.url, 'tandem_file_uploads_total', 'outcome="storage_full"')) >= 1);
  });

  test('per-guest limits: 5 attempts a minute (refused ones count), bytes per hour', async (t) => {
    const server = await serverFor(t);
    const { a, b, ga, gb } = await chat(server.url);
    t.after(() => closeAll(a, b));
    for (let i = 0; i < 3; i++) {
      assertError(await upload(server.url, ga.token, { bytes: Buffer.alloc(0), type: 'image/png', name: 'e.png' }), 400, 'invalid_upload');
    }
    assert.equal((await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: '4.png' })).status, 201);
    assert.equal((await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: '5.png' })).status, 201);
    const sixth = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: '6.png' });
    assertError(sixth, 429, 'rate_limited');
    assert.ok(Number(sixth.headers.get('retry-after')) >= 1, `Retry-After: ${sixth.headers.get('retry-after')}`);
    assert.ok(Number(sixth.headers.get('retry-after')) <= 60, `Retry-After: ${sixth.headers.get('retry-after')}`);
    // The partner has a budget of their own.
    assert.equal((await upload(server.url, gb.token, { bytes: png(), type: 'image/png', name: 'b.png' })).status, 201);
    // The attempt is counted before the chat is looked at: a guest outside a chat is limited too.
    const lone = await guestSocket(server.url);
    t.after(() => lone.socket.close());
    const loneUp = () => upload(server.url, lone.guest.token, { bytes: png(), type: 'image/png', name: 'l.png' });
    for (let i = 0; i < 5; i++) assertError(await loneUp(), 409, 'not_in_chat');
    const limited = await loneUp();
    assertError(limited, 429, 'rate_limited');
    assert.ok(Number(limited.headers.get('retry-after')) >= 1);

    const server2 = await serverFor(t, ['--file-bytes-per-hour', '1048576', '--max-file-size', '1048576', '--file-uploads-per-min', '100']);
    const p = await chat(server2.url);
    t.after(() => closeAll(p.a, p.b));
    const f = png(8, 8, 600 * 1024);
    assert.equal((await upload(server2.url, p.ga.token, { bytes: f, type: 'image/png', name: '1.png' })).status, 201);
    const over = await upload(server2.url, p.ga.token, { bytes: f, type: 'image/png', name: '2.png' });
    assertError(over, 429, 'rate_limited');
    assert.ok(Number(over.headers.get('retry-after')) >= 1);
    assert.equal(await metric(server2.url, 'tandem_files_stored'), 1);
    assert.ok((await metric(server2.url, 'tandem_file_uploads_total', 'outcome="rate_limited"')) >= 1);
  });

  test('a file sent to an away partner arrives when they return', async (t) => {
    const server = await serverFor(t);
    const { a, b, ga, gb } = await chat(server.url);
    t.after(() => a.close());
    b.close();
    await waitFor(a, 'partner:presence', 5000, (p) => p.status === 'away');
    const up = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'a.png' });
    assert.equal(up.status, 201, up.text);
    const b2 = await connect(server.url, gb.token);
    t.after(() => b2.close());
    const msg = await waitFor(b2, 'chat:message', 5000, (m) => m.type === 'file');
    assert.equal(msg.id, up.body.messageId);
    assert.equal(msg.content.fileId, up.body.fileId);
    assert.equal((await download(server.url, msg.content.url, gb.token)).status, 200);
  });

  test('refusals that need no body come before it is read: 401, 409 not_in_chat', async (t) => {
    const server = await serverFor(t, ['--file-uploads-per-min', '100']);
    const lone = await guestSocket(server.url);
    t.after(() => lone.socket.close());
    for (const [token, status, code] of [
      [undefined, 401, 'unauthorized'],
      ['not-a-token', 401, 'unauthorized'],
      [lone.guest.token, 409, 'not_in_chat'],
    ]) {
      // A body announced as 8 MiB (within the limit) of which only the part's head is sent.
      const up = streamUpload(server.url, { token, contentLength: 8 * 1024 * 1024 });
      t.after(() => up.destroy());
      await up.write(filePartHead('a.png', 'image/png'));
      const res = await within(up.response, 3000);
      up.destroy();
      assert.equal(res.status, status, `${code}: ${JSON.stringify(res)}`);
      assert.equal(res.body?.error?.code, code);
    }
  });

  test('uploads in flight count against the storage budget', async (t) => {
    const server = await serverFor(t, ['--file-storage-mb', '1', '--max-file-size', '1048576', '--file-uploads-per-min', '100']);
    const { a, b, ga, gb } = await chat(server.url);
    t.after(() => closeAll(a, b));
    const big = png(8, 8, 900 * 1024);
    const up = streamUpload(server.url, { token: ga.token });
    t.after(() => up.destroy());
    await up.write(filePartHead('big.png', 'image/png'));
    const cut = big.length - 4096;
    for (let off = 0; off < cut && !up.done; off += 64 * 1024) await up.write(big.subarray(off, Math.min(cut, off + 64 * 1024)));
    await sleep(300); // let the server take in what was sent
    assert.equal(up.done, false, 'the server answered an upload that is not finished');
    // 900 KiB are in flight: 200 KiB more would pass the 1 MiB budget; a small file still fits.
    const more = png(8, 8, 200 * 1024);
    assertError(await upload(server.url, gb.token, { bytes: more, type: 'image/png', name: 'more.png' }), 507, 'storage_full');
    assert.equal((await upload(server.url, gb.token, { bytes: png(), type: 'image/png', name: 'small.png' })).status, 201);
    const res = await up.end(Buffer.concat([big.subarray(cut), FORM_END]));
    assert.equal(res.status, 201, JSON.stringify(res));
    assert.equal(res.body.size, big.length);
    assertError(await upload(server.url, gb.token, { bytes: more, type: 'image/png', name: 'more.png' }), 507, 'storage_full');
    assert.equal(await metric(server.url, 'tandem_files_stored'), 2);
    assert.equal(await metric(server.url, 'tandem_file_bytes_stored'), big.length + png().length);
  });

  test('the chat ends while a file uploads: 409 not_in_chat, nothing kept', async (t) => {
    const server = await serverFor(t);
    const { a, b, ga } = await chat(server.url);
    t.after(() => closeAll(a, b));
    const f = png(8, 8, 256 * 1024);
    const up = streamUpload(server.url, { token: ga.token });
    t.after(() => up.destroy());
    await up.write(filePartHead('late.png', 'image/png'));
    await up.write(f.subarray(0, 128 * 1024));
    await sleep(200);
    assertOk(await emitAck(b, 'chat:leave'));
    await waitFor(a, 'chat:ended');
    const res = await up.end(Buffer.concat([f.subarray(128 * 1024), FORM_END]));
    assert.equal(res.status, 409, JSON.stringify(res));
    assert.equal(res.body?.error?.code, 'not_in_chat');
    assert.equal(await metric(server.url, 'tandem_files_stored'), 0);
    assert.equal(await metric(server.url, 'tandem_file_bytes_stored'), 0);
    // The partner never saw it.
    assert.equal(b.__log.filter((e) => e.event === 'chat:message' && e.payload.type === 'file').length, 0);
  });

  test('a partner away with a full queue: 409 partner_away_queue_full, nothing kept', async (t) => {
    const server = await serverFor(t, ['--grace-period-secs', '30', '--away-queue-max', '2']);
    const { a, b, ga } = await chat(server.url);
    t.after(() => a.close());
    b.close();
    await waitFor(a, 'partner:presence', 5000, (p) => p.status === 'away');
    await sendText(a, 'one');
    await sendText(a, 'two');
    assertError(await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'a.png' }), 409, 'partner_away_queue_full');
    assert.equal(await metric(server.url, 'tandem_files_stored'), 0);
    assert.equal(await metric(server.url, 'tandem_file_bytes_stored'), 0);
  });

  test('--file-dir: a restart removes the files a killed server left, and only those', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'tandem-e2e-files-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, 'not-tandems.txt'), 'keep me');
    const first = await serverFor(t, ['--file-dir', dir]);
    const { ga } = await chat(first.url);
    const up = await upload(first.url, ga.token, { bytes: png(), type: 'image/png', name: 'holiday.png' });
    assert.equal(up.status, 201, up.text);
    const left = readdirSync(dir).filter((n) => n !== 'not-tandems.txt');
    assert.equal(left.length, 1);
    assert.doesNotMatch(left[0], /holiday/);
    first.proc.kill('SIGKILL');
    await first.stop();
    assert.deepEqual(readdirSync(dir).sort(), [...left, 'not-tandems.txt'].sort(), 'a killed server leaves its file behind');
    const second = await serverFor(t, ['--file-dir', dir]);
    assert.deepEqual(readdirSync(dir), ['not-tandems.txt']);
    assert.equal(readFileSync(join(dir, 'not-tandems.txt'), 'utf8'), 'keep me');
    assert.equal(await metric(second.url, 'tandem_files_stored'), 0);
  });

  test('the allow-list: each sniffed type with its declared types, stored type and category', async (t) => {
    const server = await serverFor(t, ['--file-uploads-per-min', '100']);
    const { a, b, ga, gb } = await chat(server.url);
    t.after(() => closeAll(a, b));
    // [name, bytes, declared type, expected `status mimeType category`]
    const cases = [
      ['photo.jpg', JPEG, 'image/jpeg', '201 image/jpeg image'],
      ['photo2.jpg', JPEG, 'image/jpg', '201 image/jpeg image'],
      ['photo3.jpeg', JPEG, 'image/pjpeg', '201 image/jpeg image'],
      ['anim.gif', GIF, 'image/gif', '201 image/gif image'],
      ['pic.webp', WEBP, 'image/webp', '201 image/webp image'],
      ['clip.mp4', MP4, 'video/mp4', '201 video/mp4 video'],
      ['song.m4a', M4A, 'audio/x-m4a', '201 audio/mp4 audio'],
      ['song2.m4a', M4A, 'audio/mp4', '201 audio/mp4 audio'],
      ['clip.webm', WEBM, 'video/webm', '201 video/webm video'],
      ['note.webm', WEBM, 'audio/webm;codecs=opus', '201 audio/webm audio'],
      ['note.ogg', ogg(), 'application/ogg', '201 audio/ogg audio'],
      ['note.opus', ogg(), 'audio/opus', '201 audio/ogg audio'],
      ['clip.ogv', ogg(), 'video/ogg', '201 video/ogg video'],
      ['song.mp3', MP3, 'audio/mp3', '201 audio/mpeg audio'],
      ['sound.wav', WAV, 'audio/vnd.wave', '201 audio/wav audio'],
      ['sound2.wav', WAV, 'audio/x-wav', '201 audio/wav audio'],
      // The declared type must agree with the bytes.
      ['photo4.png', JPEG, 'image/png', '415'],
      ['sound3.mp3', WAV, 'audio/mpeg', '415'],
      ['clip2.mp4', WEBM, 'video/mp4', '415'],
      // application/octet-stream: the extension decides.
      ['clip3.mp4', MP4, 'application/octet-stream', '201 video/mp4 video'],
      ['p.pdf', png(), 'application/octet-stream', '415'],
      ['p', png(), 'application/octet-stream', '415'],
      // Not on the list at all.
      ['a.zip', padTo(Buffer.from('504b0304', 'hex'), 64), 'application/zip', '415'],
      ['a.tiff', padTo(Buffer.from('49492a00', 'hex'), 64), 'image/tiff', '415'],
    ];
    const got = {};
    const want = {};
    for (const [name, bytes, type, expected] of cases) {
      const res = await upload(server.url, ga.token, { bytes, type, name });
      got[name] = res.status === 201 ? `201 ${res.body.mimeType} ${res.body.category}` : `${res.status}`;
      if (res.status !== 201) got[name] += res.body?.error?.code === 'unsupported_type' ? '' : ` ${res.text}`;
      want[name] = expected;
    }
    assert.deepEqual(got, want);

    // A part without any Content-Type: the extension decides.
    const untyped = (name, bytes = png()) => uploadRaw(server.url, ga.token, Buffer.concat([filePartHead(name), bytes, FORM_END]), MULTIPART);
    const ok = await untyped('p.png');
    assert.equal(ok.status, 201, ok.text);
    assert.equal(ok.body.mimeType, 'image/png');
    assertError(await untyped('p.gif'), 415, 'unsupported_type');
    assertError(await untyped('p'), 415, 'unsupported_type');

    // Videos and audio are served as attachments with their stored type.
    const video = await upload(server.url, ga.token, { bytes: MP4, type: 'video/mp4', name: 'v.mp4' });
    const got2 = await download(server.url, video.body.url, gb.token);
    assert.equal(got2.status, 200);
    assert.ok(got2.bytes.equals(MP4));
    assert.equal(got2.headers.get('content-type'), 'video/mp4');
    assert.match(got2.headers.get('content-disposition'), /^attachment; /);
  });

  test('text files: control characters other than tab, newlines and form feed are refused', async (t) => {
    const server = await serverFor(t, ['--file-uploads-per-min', '100']);
    const { a, b, ga } = await chat(server.url);
    t.after(() => closeAll(a, b));
    const cases = {
      'tab, CR LF, form feed': ['a\tb\r\nc\fd\n', 201],
      'octet-stream .txt': ['plain words\n', 201, 'application/octet-stream'],
      NUL: ['a\u0000b', 415],
      'ESC (a terminal escape)': ['a\u001b[31mred', 415],
      'DEL (U+007F)': ['a\u007fb', 415],
      'C1 CSI (U+009B, a terminal escape)': ['a\u009b31mred', 415],
    };
    const got = {};
    const want = {};
    for (const [what, [text, status, type = 'text/plain']] of Object.entries(cases)) {
      const res = await upload(server.url, ga.token, { bytes: Buffer.from(text, 'utf8'), type, name: 'notes.txt' });
      got[what] = res.status === 201 ? `201 ${res.body.mimeType}` : `${res.status} ${res.body?.error?.code}`;
      want[what] = status === 201 ? '201 text/plain; charset=utf-8' : '415 unsupported_type';
    }
    assert.deepEqual(got, want);
  });

  test('SVG and HTML are refused also when renamed to .txt', async (t) => {
    const server = await serverFor(t, ['--file-uploads-per-min', '100']);
    const { a, b, ga } = await chat(server.url);
    t.after(() => closeAll(a, b));
    const cases = {
      'SVG as x.txt text/plain': [SVG, 'text/plain', 'x.txt'],
      'SVG as x.txt octet-stream': [SVG, 'application/octet-stream', 'x.txt'],
      'SVG with an XML declaration as x.txt': [Buffer.from(`<?xml version="1.0"?>${SVG}`), 'text/plain', 'x.txt'],
      'SVG as x.svg image/svg+xml': [SVG, 'image/svg+xml', 'x.svg'],
      'HTML document as x.txt': [HTML, 'text/plain', 'x.txt'],
      'HTML starting with <img> as x.txt': [Buffer.from('<img src=x onerror=alert(1)>'), 'text/plain', 'x.txt'],
    };
    const got = {};
    for (const [what, [bytes, type, name]] of Object.entries(cases)) {
      const res = await upload(server.url, ga.token, { bytes, type, name });
      got[what] = `${res.status} ${res.body?.error?.code ?? res.body?.mimeType}`;
    }
    assert.deepEqual(got, Object.fromEntries(Object.keys(cases).map((k) => [k, '415 unsupported_type'])));
  });

  test('other methods on the file routes: 405 method_not_allowed', async (t) => {
    const server = await serverFor(t);
    const { a, b, ga } = await chat(server.url);
    t.after(() => closeAll(a, b));
    const up = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'a.png' });
    assert.equal(up.status, 201);
    for (const [method, path] of [
      ['GET', '/api/files'],
      ['PUT', '/api/files'],
      ['DELETE', up.body.url],
      ['POST', up.body.url],
      ['PUT', up.body.url],
    ]) {
      const res = await api(server.url, path, { method, token: ga.token });
      assert.equal(res.status, 405, `${method} ${path}: ${res.status} ${res.text}`);
      assert.equal(res.body?.error?.code, 'method_not_allowed', `${method} ${path}: ${res.text}`);
    }
    // The file is still there.
    assert.equal((await download(server.url, up.body.url, ga.token)).status, 200);
  });
});
