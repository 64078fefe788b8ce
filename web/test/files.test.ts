import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  MAX_FILE_BYTES,
  MAX_VOICE_MS,
  DEFAULT_LIMITS,
  parseLimits,
  attachmentKind,
  baseMime,
  checkBeforeUpload,
  clampVoiceMs,
  downloadFailure,
  fileType,
  formatDuration,
  humanSize,
  isExpired,
  parseFileObject,
  parseUploadAnswer,
  pickRecorderType,
  retryAfterSecs,
  spokenDuration,
  typeLabel,
  uploadErrorCode,
  voiceFileName,
} from '../src/files';
import { describeError, describeUploadError } from '../src/errors';

const png = () => ({
  fileId: '9f0a1b',
  name: 'holiday.png',
  size: 48213,
  mimeType: 'image/png',
  category: 'image',
  url: '/api/files/9f0a1b?room=ab12&exp=1795849920&sig=0123abcd',
  expiresAt: '2026-11-28T07:12:00Z',
});

test('a file object from the server is read as is', () => {
  assert.deepEqual(parseFileObject(png()), png());
  const voice = { ...png(), name: 'voice-note.webm', mimeType: 'audio/webm', category: 'audio', durationMs: 4200 };
  assert.deepEqual(parseFileObject(voice), voice);
});

test('the upload answer carries messageId and timestamp, which stay out of the file object', () => {
  const a = parseUploadAnswer({ ...png(), messageId: '5c01', timestamp: 1795849920000 });
  assert.deepEqual(a, { file: png(), messageId: '5c01', timestamp: 1795849920000 });
  assert.equal(parseUploadAnswer(png()), null, 'no messageId');
  assert.equal(parseUploadAnswer({ messageId: 'x', timestamp: 1 }), null, 'no file object');
  assert.equal(parseUploadAnswer(null), null);
});

test('a broken file object is refused', () => {
  const bad: unknown[] = [
    null,
    'holiday.png',
    42,
    [],
    { ...png(), fileId: '' },
    { ...png(), fileId: 7 },
    { ...png(), name: undefined },
    { ...png(), size: -1 },
    { ...png(), size: 1.5 },
    { ...png(), size: '10' },
    { ...png(), mimeType: null },
    { ...png(), expiresAt: 'tomorrow' },
    { ...png(), url: undefined },
  ];
  for (const v of bad) assert.equal(parseFileObject(v), null, JSON.stringify(v));
});

test('the file URL must be one of tandem\'s file routes (the token goes with it)', () => {
  for (const url of [
    'https://evil.example/api/files/9f',
    '//evil.example/api/files/9f',
    '/api/guest/refresh',
    '/api/files/../guest/refresh',
    '/api/files/9f/../../guest',
    '/api/files/',
    'api/files/9f',
    '/api/files/9f?x=1#frag',
    '/api/files/9f?x=<script>',
    'javascript:alert(1)',
    '/api/files/9f\\..',
  ]) {
    assert.equal(parseFileObject({ ...png(), url }), null, url);
  }
  assert.ok(parseFileObject({ ...png(), url: '/api/files/9f' }), 'no query is fine');
});

test('odd but harmless values are tidied', () => {
  const f = parseFileObject({ ...png(), category: 'hologram', name: '  ', durationMs: 1234.6, extra: 'x' });
  assert.ok(f);
  assert.equal(f.category, 'document', 'an unknown category is shown as a document');
  assert.equal(f.name, 'file');
  assert.equal(f.durationMs, 1235);
  assert.equal('extra' in f, false);
  assert.equal(parseFileObject({ ...png(), durationMs: -5 })?.durationMs, undefined);
  assert.equal(parseFileObject({ ...png(), durationMs: 'long' })?.durationMs, undefined);
});

test('message types that carry a file', () => {
  assert.equal(fileType('file'), 'file');
  assert.equal(fileType('voice'), 'voice');
  for (const t of ['text', 'system', undefined, null, 'FILE', 1]) assert.equal(fileType(t), null);
});

test('expiry: at or past expiresAt', () => {
  const at = Date.parse('2026-11-28T07:12:00Z');
  assert.equal(isExpired(png(), at - 1), false);
  assert.equal(isExpired(png(), at), true);
  assert.equal(isExpired(png(), at + 60_000), true);
  assert.equal(isExpired({ expiresAt: 'garbage' }, at), false);
});

test('a download that answers 404 or 410 is expired; anything else is an error to retry', () => {
  assert.equal(downloadFailure(404), 'expired');
  assert.equal(downloadFailure(410), 'expired');
  for (const s of [0, 401, 403, 429, 500, 503]) assert.equal(downloadFailure(s), 'error', String(s));
});

test('how a file message is shown', () => {
  assert.equal(attachmentKind('file', { category: 'image', mimeType: 'image/png' }), 'image');
  assert.equal(attachmentKind('file', { category: 'image', mimeType: 'image/jpeg' }), 'image');
  assert.equal(attachmentKind('file', { category: 'image', mimeType: 'image/svg+xml' }), 'card', 'never an SVG inline');
  assert.equal(attachmentKind('file', { category: 'document', mimeType: 'application/pdf' }), 'card');
  assert.equal(attachmentKind('file', { category: 'audio', mimeType: 'audio/mpeg' }), 'card');
  assert.equal(attachmentKind('voice', { category: 'audio', mimeType: 'audio/webm' }), 'voice');
});

test('human file sizes', () => {
  assert.equal(humanSize(0), '0 B');
  assert.equal(humanSize(1), '1 B');
  assert.equal(humanSize(1023), '1023 B');
  assert.equal(humanSize(1024), '1.0 KB');
  assert.equal(humanSize(1536), '1.5 KB');
  assert.equal(humanSize(48213), '47 KB');
  assert.equal(humanSize(1024 * 1024 - 1), '1.0 MB', 'rounding up to 1024 KB moves to the next unit');
  assert.equal(humanSize(MAX_FILE_BYTES), '10 MB');
  assert.equal(humanSize(3.4 * 1024 * 1024), '3.4 MB');
  assert.equal(humanSize(5 * 1024 ** 3), '5.0 GB');
  assert.equal(humanSize(-1), '');
  assert.equal(humanSize(Number.NaN), '');
});

test('durations as m:ss', () => {
  assert.equal(formatDuration(0), '0:00');
  assert.equal(formatDuration(1), '0:01', 'a recording above zero shows at least a second');
  assert.equal(formatDuration(1500), '0:02');
  assert.equal(formatDuration(4200), '0:04');
  assert.equal(formatDuration(59_499), '0:59');
  assert.equal(formatDuration(65_000), '1:05');
  assert.equal(formatDuration(MAX_VOICE_MS), '5:00');
  assert.equal(formatDuration(3_725_000), '1:02:05');
  assert.equal(formatDuration(1999, 'floor'), '0:01', 'a running clock floors');
  assert.equal(formatDuration(999, 'floor'), '0:00');
  assert.equal(formatDuration(-1), '');
  assert.equal(spokenDuration(4200), '4 seconds');
  assert.equal(spokenDuration(1000), '1 second');
  assert.equal(spokenDuration(60_000), '1 minute');
  assert.equal(spokenDuration(125_000), '2 minutes 5 seconds');
  assert.equal(spokenDuration(300), '1 second');
});

test('MIME types and labels', () => {
  assert.equal(baseMime('audio/webm;codecs=opus'), 'audio/webm');
  assert.equal(baseMime(' Text/Plain; charset=utf-8'), 'text/plain');
  assert.equal(typeLabel({ mimeType: 'application/pdf', category: 'document' }), 'PDF');
  assert.equal(typeLabel({ mimeType: 'text/plain; charset=utf-8', category: 'document' }), 'Text');
  assert.equal(typeLabel({ mimeType: 'video/mp4', category: 'video' }), 'MP4 video');
  assert.equal(typeLabel({ mimeType: 'audio/mpeg', category: 'audio' }), 'MPEG audio');
  assert.equal(typeLabel({ mimeType: 'image/png', category: 'image' }), 'PNG image');
  assert.equal(typeLabel({ mimeType: '', category: 'document' }), 'File');
});

test('checks before an upload: empty and too large', () => {
  assert.equal(checkBeforeUpload(1), null);
  assert.equal(checkBeforeUpload(MAX_FILE_BYTES), null);
  assert.equal(checkBeforeUpload(MAX_FILE_BYTES + 1), 'file_too_large');
  assert.equal(checkBeforeUpload(0), 'empty_file');
  assert.equal(checkBeforeUpload(100, 50), 'file_too_large');
});

test('upload errors: the body\'s code, else one from the status', () => {
  const body = (code: string) => JSON.stringify({ error: { code, message: 'x' } });
  for (const code of ['invalid_upload', 'file_too_large', 'unsupported_type', 'voice_too_long', 'storage_full', 'not_in_chat', 'rate_limited', 'partner_away_queue_full']) {
    assert.equal(uploadErrorCode(400, body(code)), code);
  }
  assert.equal(uploadErrorCode(413, '<html>too big</html>'), 'file_too_large');
  assert.equal(uploadErrorCode(415, ''), 'unsupported_type');
  assert.equal(uploadErrorCode(429, '{}'), 'rate_limited');
  assert.equal(uploadErrorCode(507, 'null'), 'storage_full');
  assert.equal(uploadErrorCode(0, ''), 'network');
  assert.equal(uploadErrorCode(500, '{"error":{"code":""}}'), 'upload_failed');
  assert.equal(retryAfterSecs('12'), 12);
  assert.equal(retryAfterSecs(' 3 '), 3);
  assert.equal(retryAfterSecs(null), null);
  assert.equal(retryAfterSecs('Wed, 21 Oct 2026 07:28:00 GMT'), null);
});

test('every upload refusal has words for a person', () => {
  const generic = describeError('no_such_code');
  for (const code of ['invalid_upload', 'empty_file', 'file_too_large', 'unsupported_type', 'voice_too_long', 'storage_full', 'not_in_chat', 'rate_limited', 'partner_away_queue_full', 'network', 'upload_failed', 'no_recorder', 'unauthorized']) {
    const text = describeUploadError(code);
    assert.ok(text && text !== generic, `${code} has no message of its own`);
  }
  assert.match(describeUploadError('rate_limited', 42), /42 s/);
  assert.match(describeUploadError('voice_too_long'), /5 minutes/);
});

test('voice notes: recorder type, file name, duration', () => {
  const only = (...ok: string[]) => (t: string) => ok.includes(t);
  assert.equal(pickRecorderType(only('audio/webm;codecs=opus', 'audio/ogg;codecs=opus')), 'audio/webm;codecs=opus');
  assert.equal(pickRecorderType(only('audio/ogg;codecs=opus')), 'audio/ogg;codecs=opus');
  assert.equal(pickRecorderType(only('audio/mp4')), 'audio/mp4');
  assert.equal(pickRecorderType(only()), '');
  assert.equal(
    pickRecorderType(() => {
      throw new Error('nope');
    }),
    '',
  );
  assert.equal(voiceFileName('audio/webm;codecs=opus'), 'voice-note.webm');
  assert.equal(voiceFileName('audio/ogg'), 'voice-note.ogg');
  assert.equal(voiceFileName('audio/mp4'), 'voice-note.m4a');
  assert.equal(voiceFileName('audio/x-unknown'), 'voice-note');
  assert.equal(clampVoiceMs(0), 1);
  assert.equal(clampVoiceMs(1500.4), 1500);
  assert.equal(clampVoiceMs(MAX_VOICE_MS + 800), MAX_VOICE_MS);
  assert.equal(clampVoiceMs(Number.NaN), 1);
});

test('parseLimits reads GET /api/limits and keeps defaults for nonsense', () => {
  assert.deepEqual(parseLimits({ maxFileSize: 2048, maxVoiceMs: 10000, fileTtl: 60 }), { maxFileBytes: 2048, maxVoiceMs: 10000 });
  assert.deepEqual(parseLimits(null), DEFAULT_LIMITS);
  assert.deepEqual(parseLimits({ maxFileSize: -1, maxVoiceMs: '5' }), DEFAULT_LIMITS);
  assert.deepEqual(parseLimits({ maxFileSize: 1.5, maxVoiceMs: 0 }), DEFAULT_LIMITS);
  assert.equal(clampVoiceMs(20_000, 10_000), 10_000);
  assert.equal(describeUploadError('file_too_large', null, { maxFileBytes: 2 * 1024 * 1024, maxVoiceMs: 60_000 }), 'That file is too large: files are at most 2.0 MB.');
  assert.equal(describeUploadError('voice_too_long', null, { maxFileBytes: 1, maxVoiceMs: 60_000 }), 'Voice notes are at most 1 minute long.');
});
