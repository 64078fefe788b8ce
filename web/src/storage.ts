// What survives a reload of this tab (sessionStorage): the guest's token, the room, its messages
// and the call this tab was in. Anything unreadable is treated as nothing stored.

import { MAX_MESSAGES, type ChatMsg } from './chat';
import { fileType, parseFileObject } from './files';

export interface Guest {
  token: string;
  sessionId: string;
  username: string;
  /** RFC 3339. */
  expiresAt: string;
}

export interface Room {
  roomId: string;
  partner: { username: string };
}

export interface Saved {
  guest: Guest | null;
  room: Room | null;
  messages: ChatMsg[];
  lastReadSent: string | null;
  interests: string;
  /** The call this tab held, if any (to tell the person when it is gone after a reload). */
  call: { video: boolean } | null;
}

export const KEY = 'tandem.v1';

export function empty(): Saved {
  return { guest: null, room: null, messages: [], lastReadSent: null, interests: '', call: null };
}

const str = (v: unknown): v is string => typeof v === 'string';

function readGuest(v: unknown): Guest | null {
  if (typeof v !== 'object' || v === null) return null;
  const g = v as Record<string, unknown>;
  if (!str(g.token) || !str(g.sessionId) || !str(g.username) || !str(g.expiresAt)) return null;
  return { token: g.token, sessionId: g.sessionId, username: g.username, expiresAt: g.expiresAt };
}

export function readRoom(v: unknown): Room | null {
  if (typeof v !== 'object' || v === null) return null;
  const r = v as Record<string, unknown>;
  const p = r.partner as Record<string, unknown> | null | undefined;
  if (!str(r.roomId) || typeof p !== 'object' || p === null || !str(p.username)) return null;
  return { roomId: r.roomId, partner: { username: p.username } };
}

const FROM = new Set(['me', 'partner', 'system']);
const STATUS = new Set(['sending', 'sent', 'delivered', 'read', 'failed']);

function readMessage(v: unknown): ChatMsg | null {
  if (typeof v !== 'object' || v === null) return null;
  const m = v as Record<string, unknown>;
  if (!str(m.from) || !FROM.has(m.from) || !str(m.text) || typeof m.ts !== 'number') return null;
  const out: ChatMsg = { from: m.from as ChatMsg['from'], text: m.text, ts: m.ts };
  const type = fileType(m.type);
  if (type) {
    // A file message keeps its file object (never a blob: URL; the page fetches it again).
    const file = parseFileObject(m.file);
    if (!file || m.from === 'system') return null;
    out.type = type;
    out.file = file;
  }
  if (str(m.id)) out.id = m.id;
  if (str(m.clientId)) out.clientId = m.clientId;
  if (str(m.status) && STATUS.has(m.status)) {
    // A message still `sending` when the page went away never got its ack on this page.
    out.status = m.status === 'sending' ? 'failed' : (m.status as ChatMsg['status']);
  }
  return out;
}

export function parseSaved(raw: string | null): Saved {
  const s = empty();
  if (raw === null) return s;
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    return s;
  }
  if (typeof v !== 'object' || v === null) return s;
  const o = v as Record<string, unknown>;
  s.guest = readGuest(o.guest);
  s.room = readRoom(o.room);
  if (Array.isArray(o.messages)) {
    s.messages = o.messages
      .slice(-MAX_MESSAGES)
      .map(readMessage)
      .filter((m): m is ChatMsg => m !== null);
  }
  s.lastReadSent = str(o.lastReadSent) ? o.lastReadSent : null;
  s.interests = str(o.interests) ? o.interests.slice(0, 200) : '';
  const c = o.call as Record<string, unknown> | null | undefined;
  s.call = typeof c === 'object' && c !== null && typeof c.video === 'boolean' ? { video: c.video } : null;
  return s;
}

export function load(store: Pick<Storage, 'getItem'>): Saved {
  try {
    return parseSaved(store.getItem(KEY));
  } catch {
    return empty();
  }
}

export function save(store: Pick<Storage, 'setItem'>, s: Saved): void {
  try {
    store.setItem(KEY, JSON.stringify({ ...s, messages: s.messages.slice(-MAX_MESSAGES) }));
  } catch {
    // Storage full or disabled: the page works on, it just cannot restore after a reload.
  }
}
