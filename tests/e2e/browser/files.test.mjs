// Files and voice notes in the web client (docs/protocol.md "Files"; selectors: web/README.md):
// an image (thumbnail fetched with the token, shown from a blob: URL, the full view), a PDF
// (download card, saved through the browser), a voice note recorded from Chromium's fake
// microphone, receipts on own file messages, a reload (the files come back), the chat's end
// (the file is gone on the server), drag and drop, expiry, refusals and cancelling an upload.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { serverFor } from '../harness.mjs';
import { png, PDF } from '../fixtures.mjs';
import {
  launchBrowser, chatPair, waitUntil, waitView, waitShown, screenshot, report, sleep, text, attr,
} from './browser.mjs';

let b;
before(async () => {
  b = await launchBrowser();
});
after(() => b?.close());

// ---------------------------------------------------------------------------------------------
// Page helpers

/** The selector of the newest message from `from` of message type `type`. */
const msgSel = (from, type) => `#messages li.msg[data-from="${from}"][data-type="${type}"]`;

/** Waits until the newest `from`/`type` message shows a loaded image; resolves with its size. */
async function waitImage(g, from) {
  const h = await waitUntil(
    g,
    `a loaded img.file-preview in a ${from} file message`,
    (sel) => {
      const all = document.querySelectorAll(`${sel} img.file-preview`);
      const img = all[all.length - 1];
      return img && img.complete && img.naturalWidth > 0 ? { w: img.naturalWidth, h: img.naturalHeight, src: img.src } : false;
    },
    msgSel(from, 'file'),
  );
  return h.jsonValue();
}

/** Waits for the receipt `status` on my newest message of type `type`. */
function waitFileReceipt(g, type, status) {
  return waitUntil(
    g,
    `receipt ${status} on my ${type} message`,
    ([sel, st]) => {
      const all = document.querySelectorAll(`${sel} .receipt`);
      return all[all.length - 1]?.getAttribute('data-status') === st;
    },
    [msgSel('me', type), status],
  );
}

/** The file objects this page keeps in sessionStorage (for direct fetches), and its token. */
function stored(g) {
  return g.page.evaluate(() => {
    const s = JSON.parse(sessionStorage.getItem('tandem.v1') || '{}');
    return { token: s.guest?.token, files: (s.messages || []).filter((m) => m.file).map((m) => ({ from: m.from, type: m.type, ...m.file })) };
  });
}

/** GET of a file URL with this page's token, from the page: the HTTP status. */
function fetchStatus(g, url, token) {
  return g.page.evaluate(
    async ([u, tk]) => (await fetch(u, { headers: { Authorization: `Bearer ${tk}` }, cache: 'no-store' })).status,
    [url, token],
  );
}

// ---------------------------------------------------------------------------------------------

test('files between two strangers: an image, a PDF, a voice note; receipts; reload; gone when the chat ends', async (t) => {
  const server = await serverFor(t, []);
  const { A, B } = await chatPair(b, server, t);
  for (const sel of ['#attach', '#file-input', '#record']) {
    assert.ok(await A.page.$(sel), `the chat has no ${sel}:\n${await report(A)}`);
  }
  assert.equal(await attr(A, '#record', 'aria-pressed'), 'false');
  await waitShown(A, '#upload-progress', false);

  // (1) Ann attaches a PNG: Bob sees the thumbnail, loaded from a blob: URL.
  const image = png(64, 64);
  await A.page.setInputFiles('#file-input', { name: 'gradient.png', mimeType: 'image/png', buffer: image });
  const seen = await waitImage(B, 'partner');
  assert.deepEqual([seen.w, seen.h], [64, 64], 'Bob\'s thumbnail is the 64×64 image');
  assert.match(seen.src, /^blob:/, 'the image is shown from a blob: URL (fetched with the token)');
  const mine = await waitImage(A, 'me');
  assert.deepEqual([mine.w, mine.h], [64, 64]);
  await waitFileReceipt(A, 'file', 'read');
  await waitShown(A, '#upload-progress', false);
  const idA = await attr(A, msgSel('me', 'file'), 'data-id');
  const idB = await attr(B, msgSel('partner', 'file'), 'data-id');
  assert.ok(idA && idA === idB, `both sides carry tandem's message id (${idA} / ${idB})`);
  assert.ok(await attr(A, msgSel('me', 'file'), 'data-client-id'), 'own file message has data-client-id');
  await screenshot(A.page, 'files-image-sender');
  await screenshot(B.page, 'files-image-receiver');

  // Bob opens the full image and closes it again.
  await B.page.click(`${msgSel('partner', 'file')} .file-thumb`);
  await waitUntil(B, 'the image viewer open with the image', () => {
    const v = document.querySelector('#viewer');
    const img = document.querySelector('#viewer-img');
    return v?.open && img?.complete && img.naturalWidth === 64;
  });
  await screenshot(B.page, 'files-image-viewer');
  await B.page.click('#viewer-close');
  await waitUntil(B, 'the image viewer closed', () => !document.querySelector('#viewer')?.open);

  // (2) A PDF: a download card with its name, size and type; Bob saves it.
  await A.page.setInputFiles('#file-input', { name: 'notes.pdf', mimeType: 'application/pdf', buffer: PDF });
  const card = `${msgSel('partner', 'file')} .file-card`;
  await waitUntil(B, 'a .file-card for notes.pdf', (sel) => [...document.querySelectorAll(sel)].some((c) => c.querySelector('.file-name')?.textContent === 'notes.pdf'), card);
  assert.equal(await text(B, `${card} .file-size`), `${PDF.length} B`);
  assert.equal(await text(B, `${card} .file-type`), 'PDF');
  await waitFileReceipt(A, 'file', 'read');
  const [download] = await Promise.all([B.page.waitForEvent('download'), B.page.click(`${card} .file-download`)]);
  assert.equal(download.suggestedFilename(), 'notes.pdf');
  const path = await download.path();
  assert.ok(path, `the download failed: ${await download.failure()}`);
  assert.deepEqual(readFileSync(path), PDF, 'the saved file is the PDF Ann sent');

  // (3) A voice note from the fake microphone.
  await A.page.click('#record');
  await waitUntil(A, '#record pressed and the clock running', () =>
    document.querySelector('#record')?.getAttribute('aria-pressed') === 'true' && !document.querySelector('#record-time')?.hidden);
  await sleep(1600);
  const clock = await text(A, '#record-time');
  assert.match(clock, /^0:0[1-3]$/, `#record-time while recording: ${clock}`);
  await screenshot(A.page, 'files-recording');
  await A.page.click('#record');
  await waitUntil(A, '#record released', () => document.querySelector('#record')?.getAttribute('aria-pressed') === 'false');
  const voice = msgSel('partner', 'voice');
  await waitUntil(B, 'a playable audio.voice-player', (sel) => {
    const a = document.querySelector(`${sel} audio.voice-player`);
    return a && a.src.startsWith('blob:') && a.readyState >= 1 && !a.error;
  }, voice);
  const dur = await text(B, `${voice} .voice-duration`);
  assert.match(dur, /^0:0[1-3]$/, `the voice note's duration: ${dur}`);
  await waitUntil(A, 'own audio.voice-player', (sel) => !!document.querySelector(`${sel} audio.voice-player`), msgSel('me', 'voice'));
  await waitFileReceipt(A, 'voice', 'read');
  const files = (await stored(B)).files;
  const note = files.find((f) => f.type === 'voice');
  assert.ok(note && note.category === 'audio' && note.durationMs >= 1000 && note.durationMs < 4000, `the voice note's file object: ${JSON.stringify(note)}`);
  await screenshot(A.page, 'files-voice-sender');
  await screenshot(B.page, 'files-voice-receiver');

  // A reload keeps the file messages (the blobs are fetched again).
  await B.page.reload({ waitUntil: 'load' });
  await waitView(B, 'chat');
  await waitImage(B, 'partner');
  await waitUntil(B, 'the card and the voice note after the reload', () =>
    !!document.querySelector('#messages .file-card .file-name') && !!document.querySelector('#messages audio.voice-player'));

  // (4) The chat ends: the file is gone on the server (404), and the page shows the lobby.
  const { token, files: after } = await stored(B);
  const pic = after.find((f) => f.from === 'partner' && f.mimeType === 'image/png');
  assert.ok(pic, `Bob's stored messages keep the image: ${JSON.stringify(after)}`);
  assert.equal(await fetchStatus(B, pic.url, token), 200, 'the image is there during the chat');
  await A.page.click('#leave');
  await waitView(B, 'lobby');
  await waitUntil(B, 'no file messages left', () => !document.querySelector('#messages li.msg[data-type]'));
  assert.equal(await fetchStatus(B, pic.url, token), 404, 'the image is deleted with the chat');
  assert.equal(await text(A, '#error'), '', `Ann saw an error: ${await report(A)}`);
  assert.equal(await text(B, '#error'), '', `Bob saw an error: ${await report(B)}`);
});

test('drag and drop, expiry, refusals (type, size) and cancelling an upload', async (t) => {
  const server = await serverFor(t, ['--file-ttl', '5', '--max-file-size', '1048576']);
  const { A, B } = await chatPair(b, server, t);

  // Drag a PNG over the chat (highlight), drop it.
  const bytes = [...png(32, 32)];
  const dt = await A.page.evaluateHandle((arr) => {
    const d = new DataTransfer();
    d.items.add(new File([new Uint8Array(arr)], 'dropped.png', { type: 'image/png' }));
    return d;
  }, bytes);
  await A.page.dispatchEvent('#messages', 'dragenter', { dataTransfer: dt });
  await waitShown(A, '#drop-hint', true);
  await screenshot(A.page, 'files-drop-highlight');
  await A.page.dispatchEvent('#messages', 'drop', { dataTransfer: dt });
  await waitShown(A, '#drop-hint', false);
  const seen = await waitImage(B, 'partner');
  assert.equal(seen.w, 32);

  // --file-ttl 5: both sides show it as expired, without the preview.
  for (const [g, from] of [[A, 'me'], [B, 'partner']]) {
    await waitUntil(g, 'the image shown as expired', (sel) => {
      const li = document.querySelector(sel);
      return li?.querySelector('.file-expired')?.textContent === 'expired' && !li.querySelector('img.file-preview');
    }, msgSel(from, 'file'), 15_000);
  }
  await screenshot(B.page, 'files-expired');
  const { token, files } = await stored(B);
  assert.equal(files.length, 1);
  assert.equal(await fetchStatus(B, files[0].url, token), 410, 'a file past its expiry answers 410');

  // A type the server refuses (HTML): a human error, nothing sent.
  await A.page.setInputFiles('#file-input', { name: 'page.html', mimeType: 'text/html', buffer: Buffer.from('<!doctype html><p>hi</p>') });
  await waitUntil(A, 'the unsupported-type error', () => /cannot be shared/.test(document.querySelector('#error')?.textContent ?? ''));
  // Over this server's limit (1 MiB, learnt from GET /api/limits): refused before uploading.
  await A.page.setInputFiles('#file-input', { name: 'big.pdf', mimeType: 'application/pdf', buffer: Buffer.concat([PDF, Buffer.alloc(2 * 1024 * 1024)]) });
  await waitUntil(A, 'the too-large error naming the server limit', () =>
    /too large: files are at most 1\.0 MB/.test(document.querySelector('#error')?.textContent ?? ''));
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  assert.match(metrics, /^tandem_file_uploads_total\{category="unknown",outcome="too_large"\} 0$/m, 'the big file never reached the server');

  // An upload under way shows #upload-progress and can be cancelled. A's uploads crawl at 8 KB/s
  // (Chromium's own network throttling, so the request really is on its way to tandem) and the
  // file is 200 KB: cancelled after its progress shows, it never completes; tandem drops the
  // half-sent body and posts nothing.
  const cdp = await A.context.newCDPSession(A.page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: 8 * 1024,
  });
  const slow = Buffer.concat([PDF, Buffer.alloc(200 * 1024)]);
  await A.page.setInputFiles('#file-input', { name: 'later.pdf', mimeType: 'application/pdf', buffer: slow });
  await waitShown(A, '#upload-progress', true);
  assert.match((await text(A, '#upload-label')) ?? '', /later\.pdf/);
  await screenshot(A.page, 'files-uploading');
  await A.page.click('#upload-cancel');
  await waitShown(A, '#upload-progress', false);
  await waitUntil(A, 'the cancel notice', () => /cancelled/.test(document.querySelector('#notice')?.textContent ?? ''));
  // Full speed again: an upload that was not really stopped would now arrive within the second.
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1,
  });
  await cdp.detach();
  await sleep(1500);
  const cards = await B.page.$$eval('#messages li.msg[data-type]', (els) =>
    els.map((li) => `${li.getAttribute('data-type')}/${li.getAttribute('data-from') ?? ''}: ${li.textContent?.trim().slice(0, 80)}`));
  assert.equal(cards.length, 1, `only the dropped image reached Bob; Bob shows ${JSON.stringify(cards)}\n${await report(B)}`);
});
