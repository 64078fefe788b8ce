// Shared files and voice notes (docs/protocol.md, "Files"): POST /api/files, the partner's
// `file` / `voice` message, GET/HEAD on the signed URL, expiry, deletion when the chat ends,
// who may download, tampered URLs, the streamed size cut-off, type sniffing, the storage budget,
// the per-guest limits and the metrics.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
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

// ---- tests --------------------------------------------------------------------------------

describe('shared files', () => {
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
    const bytes = png(16, 16);
    const res = await upload(server.url, ga.token, {
      bytes,
      type: 'image/png',
      name: 'holiday.png',
      fields: { clientId: 'up-1' },
    });
    assert.equal(res.status, 201, res.text);
    const f = res.body;
    assert.match(f.fileId, /^[0-9a-f]{32}$/);
    assert.equal(f.name, 'holiday.png');
    assert.equal(f.size, bytes.length);
    assert.equal(f.mimeType, 'image/png');
    assert.equal(f.category, 'image');
    assert.match(f.url, new RegExp(`^/api/files/${f.fileId}\\?room=${roomId}&exp=\\d+&sig=[0-9a-f]{64}$`));
    assert.ok(Date.parse(f.expiresAt) > Date.now() + 3000 * 1000, `expiresAt ${f.expiresAt}: about an hour away`);
    assert.equal(f.durationMs, undefined);
    assert.match(f.messageId, /^[0-9a-f]{16}$/);
    assert.equal(typeof f.timestamp, 'number');

    const msg = await waitFor(b, 'chat:message', 5000, (m) => m.type === 'file');
    assert.equal(msg.id, f.messageId);
    assert.equal(msg.roomId, roomId);
    assert.equal(msg.from, 'partner');
    assert.equal(msg.timestamp, f.timestamp);
    const { messageId: _m, timestamp: _t, ...object } = f;
    assert.deepEqual(msg.content, object);
    const sent = await waitFor(a, 'chat:message:sent', 5000, (s) => s.clientId === 'up-1');
    assert.equal(sent.id, f.messageId);
    const delivered = await waitFor(a, 'chat:message:delivered', 5000);
    assert.equal(delivered.id, f.messageId);
    assertOk(await emitAck(b, 'chat:message:read', { id: f.messageId }));
    assert.equal((await waitFor(a, 'chat:message:read')).id, f.messageId);

    for (const token of [gb.token, ga.token]) {
      const got = await download(server.url, f.url, token);
      assert.equal(got.status, 200);
      assert.ok(got.bytes.equals(bytes), 'downloaded bytes differ from the upload');
      assert.equal(got.headers.get('content-type'), 'image/png');
      assert.equal(Number(got.headers.get('content-length')), bytes.length);
      assert.equal(got.headers.get('content-disposition'), `inline; filename="holiday.png"; filename*=UTF-8''holiday.png`);
      assert.equal(got.headers.get('x-content-type-options'), 'nosniff');
      assert.match(got.headers.get('content-security-policy'), /default-src 'none'/);
      assert.match(got.headers.get('content-security-policy'), /sandbox/);
      assert.equal(got.headers.get('cache-control'), 'private, no-store');
      assert.equal(got.headers.get('cross-origin-resource-policy'), 'same-origin');
    }
    const head = await download(server.url, f.url, gb.token, 'HEAD');
    assert.equal(head.status, 200);
    assert.equal(head.bytes.length, 0);
    assert.equal(head.headers.get('content-type'), 'image/png');
    assert.equal(Number(head.headers.get('content-length')), bytes.length);

    assert.ok((await metric(server.url, 'tandem_file_uploads_total', 'category="image",outcome="ok"')) >= 1);
    assert.ok((await metric(server.url, 'tandem_file_downloads_total', 'outcome="ok"')) >= 3);
    assert.equal(await metric(server.url, 'tandem_files_stored'), 1);
    assert.equal(await metric(server.url, 'tandem_file_bytes_stored'), bytes.length);
  });

  test('a PDF is a document served as an attachment; a .txt is text/plain; names are sanitized', async (t) => {
    const server = await serverFor(t);
    const { a, b, ga, gb } = await chat(server.url);
    t.after(() => closeAll(a, b));
    const pdf = await upload(server.url, ga.token, { bytes: PDF, type: 'application/pdf', name: 'notes.pdf' });
    assert.equal(pdf.status, 201, pdf.text);
    assert.equal(pdf.body.category, 'document');
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
    const win = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'C:\\Users\\me\\photo.png' });
    assert.equal(win.body.name, 'photo.png');
    const bare = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'photo' });
    assert.equal(bare.body.name, 'photo.png');
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
    assert.ok((await metric(server.url, 'tandem_file_uploads_total', 'outcome="voice_too_long"')) >= 1);
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
    assert.ok((await metric(server.url, 'tandem_file_downloads_total', 'outcome="forbidden"')) >= 2);
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
    for (const v of variants) assertError(await download(server.url, v, gb.token), 403, 'invalid_signature');
    // The real one still works.
    assert.equal((await download(server.url, up.body.url, gb.token)).status, 200);
  });

  test('expiry: past --file-ttl the URL answers 410 and the file is swept', async (t) => {
    const server = await serverFor(t, ['--file-ttl', '2']);
    const { a, b, ga, gb } = await chat(server.url);
    t.after(() => closeAll(a, b));
    const up = await upload(server.url, ga.token, { bytes: png(), type: 'image/png', name: 'a.png' });
    assert.equal(up.status, 201);
    assert.ok(Date.parse(up.body.expiresAt) <= Date.now() + 3000);
    assert.equal((await download(server.url, up.body.url, gb.token)).status, 200);
    await until('the file to be swept', async () => (await metric(server.url, 'tandem_files_stored')) === 0, 6000);
    await until('the URL to expire', async () => (await download(server.url, up.body.url, gb.token)).status === 410, 3000);
    assertError(await download(server.url, up.body.url, gb.token), 410, 'expired');
    assert.ok((await metric(server.url, 'tandem_file_expirations_total')) >= 1);
    assert.ok((await metric(server.url, 'tandem_files_deleted_total', 'reason="expired"')) >= 1);
    assert.equal(await metric(server.url, 'tandem_file_bytes_stored'), 0);
  });

  for (const storage of ['memory', 'disk']) {
    test(`the chat ends: its files are deleted (${storage})`, async (t) => {
      let dir;
      const flags = [];
      if (storage === 'disk') {
        dir = mkdtempSync(join(tmpdir(), 'tandem-e2e-files-'));
        t.after(() => rmSync(dir, { recursive: true, force: true }));
        flags.push('--file-dir', dir);
      }
      const server = await serverFor(t, flags);
      const { a, b, ga, gb } = await chat(server.url);
      t.after(() => closeAll(a, b));
      const ups = [];
      for (const [bytes, type, name] of [[png(), 'image/png', 'a.png'], [PDF, 'application/pdf', 'b.pdf']]) {
        const up = await upload(server.url, ga.token, { bytes, type, name });
        assert.equal(up.status, 201, up.text);
        ups.push(up.body);
      }
      if (dir) assert.equal(readdirSync(dir).length, 2, 'two files on disk');
      assert.equal(await metric(server.url, 'tandem_files_stored'), 2);
      assertOk(await emitAck(b, 'chat:leave'));
      for (const f of ups) {
        assertError(await download(server.url, f.url, gb.token), 404, 'not_found');
        assertError(await download(server.url, f.url, ga.token), 404, 'not_found');
      }
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

    // A Content-Length already over the limit is refused before the body is read.
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
    // The partner has a budget of their own.
    assert.equal((await upload(server.url, gb.token, { bytes: png(), type: 'image/png', name: 'b.png' })).status, 201);

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
});
