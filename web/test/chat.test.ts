import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatLog, MAX_MESSAGES, TypingSender, checkNickname, parseInterests } from '../src/chat';

test('own message: sending → sent → delivered → read, never backwards', () => {
  const log = new ChatLog();
  const m = log.addOwn('c1', 'hi', 1);
  assert.equal(m.status, 'sending');
  assert.equal(log.sent('c1', 'm1', 2), true);
  assert.equal(m.status, 'sent');
  assert.equal(m.id, 'm1');
  assert.equal(log.sent('c1', 'm1', 2), false, 'the ack and chat:message:sent both arrive');
  assert.equal(log.delivered('m1'), true);
  assert.equal(m.status, 'delivered');
  assert.equal(log.read('m1'), true);
  assert.equal(m.status, 'read');
  assert.equal(log.delivered('m1'), false);
  assert.equal(m.status, 'read');
});

test('read marks every own message up to and including the id', () => {
  const log = new ChatLog();
  for (const n of [1, 2, 3]) {
    log.addOwn(`c${n}`, `m${n}`, n);
    log.sent(`c${n}`, `m${n}`, n);
  }
  log.addIncoming('partner', 'p1', 'yo', 4);
  assert.equal(log.read('m2'), true);
  assert.deepEqual(
    log.messages.filter((m) => m.from === 'me').map((m) => m.status),
    ['read', 'read', 'sent'],
  );
  assert.equal(log.read('unknown'), false);
  assert.equal(log.read('p1'), false, 'a partner id marks nothing');
});

test('a failed send is shown as failed; unknown ids change nothing', () => {
  const log = new ChatLog();
  log.addOwn('c1', 'x', 1);
  assert.equal(log.failed('c1'), true);
  assert.equal(log.messages[0].status, 'failed');
  assert.equal(log.failed('nope'), false);
  assert.equal(log.sent('nope', 'id', 1), false);
  assert.equal(log.delivered('nope'), false);
});

test('incoming duplicates are ignored; the log is bounded', () => {
  const log = new ChatLog();
  assert.ok(log.addIncoming('partner', 'p1', 'a', 1));
  assert.equal(log.addIncoming('partner', 'p1', 'a', 1), null);
  for (let i = 0; i < MAX_MESSAGES + 50; i++) log.addIncoming('partner', `x${i}`, 't', i);
  assert.equal(log.messages.length, MAX_MESSAGES);
  assert.equal(log.messages[log.messages.length - 1].id, `x${MAX_MESSAGES + 49}`);
});

test('read marker: the newest visible partner message, once, never older', () => {
  const log = new ChatLog();
  log.addIncoming('partner', 'p1', 'a', 1);
  log.addOwn('c1', 'b', 2);
  log.addIncoming('partner', 'p2', 'c', 3);
  log.addIncoming('system', 's1', 'sys', 4);
  assert.equal(log.readMarker([]), null);
  assert.equal(log.readMarker(['s1']), null, 'system messages are not read-marked');
  assert.equal(log.readMarker(['p1']), 'p1');
  assert.equal(log.readMarker(['p1']), null, 'already reported');
  assert.equal(log.readMarker(['p1', 'p2']), 'p2');
  assert.equal(log.readMarker(['p1']), null, 'older than the last reported');
  assert.equal(log.lastReadSent, 'p2');
});

test('typing: one start per 3 s while typing; stop only after a start', () => {
  const t = new TypingSender(3000);
  assert.equal(t.stop(), false);
  assert.equal(t.input(0), true);
  assert.equal(t.input(100), false);
  assert.equal(t.input(2999), false);
  assert.equal(t.input(3000), true);
  assert.equal(t.input(3500), false);
  assert.equal(t.stop(), true);
  assert.equal(t.stop(), false);
  assert.equal(t.input(3600), true, 'a new burst of typing starts at once');
});

test('typing: over a minute of steady typing sends at most 21 starts', () => {
  const t = new TypingSender(3000);
  let n = 0;
  for (let ms = 0; ms <= 60_000; ms += 50) if (t.input(ms)) n++;
  assert.equal(n, 21);
});

test('interests: trimmed, deduplicated, at most 5 of at most 24 characters', () => {
  assert.deepEqual(parseInterests(''), { ok: true, tags: [] });
  assert.deepEqual(parseInterests(' music , Chess,,music, MUSIC '), { ok: true, tags: ['music', 'Chess'] });
  assert.equal(parseInterests('a,b,c,d,e').ok, true);
  assert.equal(parseInterests('a,b,c,d,e,f').ok, false);
  assert.equal(parseInterests('x'.repeat(24)).ok, true);
  assert.equal(parseInterests('x'.repeat(25)).ok, false);
});

test('nickname: optional; the server rule otherwise', () => {
  assert.deepEqual(checkNickname('  '), { ok: true, name: null });
  assert.deepEqual(checkNickname(' Ada_L-1 '), { ok: true, name: 'Ada_L-1' });
  assert.deepEqual(checkNickname('Zoë'), { ok: true, name: 'Zoë' });
  assert.equal(checkNickname('a'.repeat(25)).ok, false);
  assert.equal(checkNickname('<script>').ok, false);
  assert.equal(checkNickname('tab\there').ok, false);
});

const photo = {
  fileId: 'f1',
  name: 'cat.png',
  size: 2048,
  mimeType: 'image/png',
  category: 'image' as const,
  url: '/api/files/f1?room=r&exp=1&sig=ab',
  expiresAt: '2026-11-28T07:12:00Z',
};

test('a partner file message keeps its file; its text is the name (a voice note says so)', () => {
  const log = new ChatLog();
  const m = log.addIncoming('partner', 'p1', '', 5, { type: 'file', file: photo });
  assert.ok(m);
  assert.equal(m.type, 'file');
  assert.deepEqual(m.file, photo);
  assert.equal(m.text, 'cat.png');
  const v = log.addIncoming('partner', 'p2', '', 6, { type: 'voice', file: { ...photo, fileId: 'f2', durationMs: 1200 } });
  assert.equal(v?.text, 'Voice note');
  assert.equal(log.addIncoming('partner', 'p1', '', 5, { type: 'file', file: photo }), null, 'a repeat is ignored');
  assert.deepEqual([...log.fileIds()], ['f1', 'f2']);
  log.addIncoming('partner', 'p3', 'plain text', 7);
  assert.equal(log.messages[2].type, undefined);
  assert.equal(log.messages[2].file, undefined);
});

test('an own file is added from the upload answer as sent, then follows its receipts', () => {
  const log = new ChatLog();
  const m = log.addOwnFile('c1', 'm1', 10, 'file', photo);
  assert.ok(m);
  assert.equal(m.status, 'sent');
  assert.equal(m.id, 'm1');
  assert.equal(m.clientId, 'c1');
  assert.equal(log.sent('c1', 'm1', 10), false, 'chat:message:sent after the answer changes nothing');
  assert.equal(log.delivered('m1'), true);
  assert.equal(log.read('m1'), true);
  assert.equal(m.status, 'read');
  assert.equal(log.addOwnFile('c1', 'm1', 10, 'file', photo), null, 'added once');
});

test('receipts of an upload that arrive before its HTTP answer are kept for it', () => {
  const log = new ChatLog();
  log.addOwn('t1', 'text before', 1);
  log.sent('t1', 'm0', 1);
  assert.equal(log.delivered('m1'), false);
  const a = log.addOwnFile('c1', 'm1', 10, 'file', photo);
  assert.equal(a?.status, 'delivered');

  assert.equal(log.read('m2'), false);
  const b = log.addOwnFile('c2', 'm2', 11, 'voice', { ...photo, fileId: 'f2' });
  assert.equal(b?.status, 'read');
  assert.deepEqual(
    log.messages.map((x) => x.status),
    ['read', 'read', 'read'],
    'read up to the upload reads everything before it',
  );
  assert.equal(log.addOwnFile('c3', 'm3', 12, 'file', { ...photo, fileId: 'f3' })?.status, 'sent', 'no early receipt: sent');
});

test('early receipts: read is not lowered by a later delivered; only a few are kept', () => {
  const log = new ChatLog();
  log.read('m1');
  log.delivered('m1');
  assert.equal(log.addOwnFile('c1', 'm1', 1, 'file', photo)?.status, 'read');
  for (let i = 0; i < 100; i++) log.delivered(`gone${i}`);
  assert.equal(log.addOwnFile('c2', 'gone0', 2, 'file', { ...photo, fileId: 'f2' })?.status, 'sent', 'the oldest were dropped');
  assert.equal(log.addOwnFile('c3', 'gone99', 3, 'file', { ...photo, fileId: 'f3' })?.status, 'delivered');
});
