import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KEY, empty, load, parseSaved, save, type Saved } from '../src/storage';

class MemStore {
  data = new Map<string, string>();
  getItem(k: string): string | null {
    return this.data.get(k) ?? null;
  }
  setItem(k: string, v: string): void {
    this.data.set(k, v);
  }
}

const photo = {
  fileId: 'f1',
  name: 'cat.png',
  size: 2048,
  mimeType: 'image/png',
  category: 'image' as const,
  url: '/api/files/f1?room=r1&exp=1795849920&sig=ab',
  expiresAt: '2026-11-28T07:12:00Z',
};
const voice = { ...photo, fileId: 'f2', name: 'voice-note.webm', mimeType: 'audio/webm', category: 'audio' as const, url: '/api/files/f2', durationMs: 4200 };

const sample = (): Saved => ({
  guest: { token: 't', sessionId: 's', username: 'Ada', expiresAt: '2026-11-28T10:00:00Z' },
  room: { roomId: 'r1', partner: { username: 'Bob' } },
  messages: [
    { from: 'me', text: 'hi', ts: 1, clientId: 'c1', id: 'm1', status: 'read' },
    { from: 'partner', text: 'yo', ts: 2, id: 'p1' },
    { from: 'system', text: 'You are chatting', ts: 0, id: 's1' },
    { from: 'partner', text: 'cat.png', ts: 3, id: 'p2', type: 'file', file: photo },
    { from: 'me', text: 'Voice note', ts: 4, id: 'm2', clientId: 'c2', status: 'delivered', type: 'voice', file: voice },
  ],
  lastReadSent: 'p1',
  interests: 'music',
  call: { video: true },
});

test('save then load gives back the same state', () => {
  const store = new MemStore();
  save(store, sample());
  assert.deepEqual(load(store), sample());
});

test('nothing stored, or garbage, loads as empty', () => {
  assert.deepEqual(load(new MemStore()), empty());
  for (const raw of ['', '{', 'null', '42', '[]', '"x"', '{"guest":5,"room":{"roomId":1}}']) {
    assert.deepEqual(parseSaved(raw), empty(), raw);
  }
});

test('bad parts are dropped, good parts kept', () => {
  const raw = JSON.stringify({
    guest: { token: 't' },
    room: { roomId: 'r1', partner: { username: 'Bob' } },
    messages: [{ from: 'me', text: 'ok', ts: 1, status: 'sent' }, { from: 'hacker', text: 'x', ts: 1 }, 7, null],
    call: { video: 'yes' },
  });
  const s = parseSaved(raw);
  assert.equal(s.guest, null);
  assert.deepEqual(s.room, { roomId: 'r1', partner: { username: 'Bob' } });
  assert.equal(s.messages.length, 1);
  assert.equal(s.call, null);
});

test('a message still sending when the page went away comes back as failed', () => {
  const s = parseSaved(JSON.stringify({ messages: [{ from: 'me', text: 'x', ts: 1, clientId: 'c', status: 'sending' }] }));
  assert.equal(s.messages[0].status, 'failed');
});

test('a storage that throws (full, disabled) does not break the page', () => {
  const broken = {
    getItem(): string | null {
      throw new Error('denied');
    },
    setItem(): void {
      throw new Error('quota');
    },
  };
  assert.deepEqual(load(broken), empty());
  save(broken, sample());
  const store = new MemStore();
  save(store, sample());
  assert.ok(store.getItem(KEY));
});

test('file messages keep their file object; a broken one is dropped', () => {
  const raw = JSON.stringify({
    messages: [
      { from: 'partner', text: 'cat.png', ts: 1, id: 'p1', type: 'file', file: photo },
      { from: 'partner', text: 'x', ts: 2, id: 'p2', type: 'file', file: { ...photo, url: 'https://evil.example/' } },
      { from: 'partner', text: 'x', ts: 3, id: 'p3', type: 'voice' },
      { from: 'system', text: 'x', ts: 4, id: 's1', type: 'file', file: photo },
      { from: 'partner', text: 'hi', ts: 5, id: 'p4', type: 'text' },
      { from: 'me', text: 'v', ts: 6, clientId: 'c', id: 'm', status: 'read', type: 'voice', file: voice, blobUrl: 'blob:x' },
    ],
  });
  const s = parseSaved(raw);
  assert.deepEqual(
    s.messages.map((m) => m.id),
    ['p1', 'p4', 'm'],
  );
  assert.deepEqual(s.messages[0].file, photo);
  assert.equal(s.messages[1].type, undefined, 'a text message stays text');
  assert.equal(s.messages[2].type, 'voice');
  assert.equal(s.messages[2].file?.durationMs, 4200);
  assert.equal('blobUrl' in s.messages[2], false, 'nothing but the file object is kept');
});
