// The chat log of the current room with receipt states, and the typing throttle. Pure logic, no
// DOM: the page renders what this holds.

import type { FileObject, FileType } from './files';

export type Receipt = 'sending' | 'sent' | 'delivered' | 'read' | 'failed';
export type From = 'me' | 'partner' | 'system';

export interface ChatMsg {
  from: From;
  /** The text; for a file or voice note its name (for logs and screen readers). */
  text: string;
  /** Absent for text and system messages. */
  type?: FileType;
  /** The file of a `file` / `voice` message. */
  file?: FileObject;
  /** Server time (ms) once known, else the local time it was written. */
  ts: number;
  /** Server id (partner and system messages always; own messages once accepted). */
  id?: string;
  /** The id this page gave its own message. */
  clientId?: string;
  /** Own messages only. */
  status?: Receipt;
}

/** How many messages a room keeps (and stores for a reload). */
export const MAX_MESSAGES = 300;

const RANK: Record<Receipt, number> = { failed: -1, sending: 0, sent: 1, delivered: 2, read: 3 };

/** A file message's text: its name, or "Voice note". */
export function fileText(type: FileType, file: FileObject): string {
  return type === 'voice' ? 'Voice note' : file.name;
}

export class ChatLog {
  messages: ChatMsg[] = [];
  /** The newest partner message id this page has reported as read. */
  lastReadSent: string | null = null;
  /**
   * Receipts for own ids this log does not hold yet: an uploaded file's message is added when the
   * upload's HTTP answer arrives, and its receipts (socket events) may come first.
   */
  private readonly early = new Map<string, 'delivered' | 'read'>();

  constructor(messages: ChatMsg[] = [], lastReadSent: string | null = null) {
    this.messages = messages.slice(-MAX_MESSAGES);
    this.lastReadSent = lastReadSent;
  }

  private push(m: ChatMsg): ChatMsg {
    this.messages.push(m);
    if (this.messages.length > MAX_MESSAGES) this.messages.splice(0, this.messages.length - MAX_MESSAGES);
    return m;
  }

  addOwn(clientId: string, text: string, now: number): ChatMsg {
    return this.push({ from: 'me', text, ts: now, clientId, status: 'sending' });
  }

  /**
   * An own file or voice note the server accepted (the upload's answer): it starts as `sent`,
   * or later when its receipts came first.
   */
  addOwnFile(clientId: string, id: string, ts: number, type: FileType, file: FileObject): ChatMsg | null {
    if (this.messages.some((m) => m.from === 'me' && m.id === id)) return null;
    const m = this.push({ from: 'me', text: fileText(type, file), ts, id, clientId, status: 'sent', type, file });
    const early = this.early.get(id);
    this.early.delete(id);
    if (early === 'delivered') this.raise(m, 'delivered');
    else if (early === 'read') this.read(id);
    return m;
  }

  /** A partner or system message; a repeat of an id already held is ignored (returns null). */
  addIncoming(
    from: 'partner' | 'system',
    id: string,
    text: string,
    ts: number,
    attachment?: { type: FileType; file: FileObject },
  ): ChatMsg | null {
    if (this.messages.some((m) => m.id === id && m.from === from)) return null;
    const m: ChatMsg = { from, id, text, ts };
    if (attachment) {
      m.type = attachment.type;
      m.file = attachment.file;
      m.text = fileText(attachment.type, attachment.file);
    }
    return this.push(m);
  }

  /** The file ids of the messages held. */
  fileIds(): Set<string> {
    const out = new Set<string>();
    for (const m of this.messages) if (m.file) out.add(m.file.fileId);
    return out;
  }

  private remember(id: string, r: 'delivered' | 'read'): void {
    if (this.early.get(id) === 'read') return;
    this.early.set(id, r);
    // Only a handful of uploads can be in flight: keep the newest few.
    while (this.early.size > 32) this.early.delete(this.early.keys().next().value as string);
  }

  /** A local note (not from the server). */
  addNote(text: string, now: number): ChatMsg {
    return this.push({ from: 'system', text, ts: now });
  }

  private own(pred: (m: ChatMsg) => boolean): ChatMsg | undefined {
    return this.messages.find((m) => m.from === 'me' && pred(m));
  }

  private raise(m: ChatMsg, to: Receipt): boolean {
    const cur = m.status ?? 'sending';
    if (cur === 'failed' && to !== 'sent' && to !== 'delivered' && to !== 'read') return false;
    if (RANK[to] <= RANK[cur] && cur !== 'failed') return false;
    m.status = to;
    return true;
  }

  /** The server accepted an own message (ack or `chat:message:sent`). */
  sent(clientId: string, id: string, ts: number): boolean {
    const m = this.own((x) => x.clientId === clientId);
    if (!m) return false;
    m.id = id;
    m.ts = ts;
    return this.raise(m, 'sent');
  }

  failed(clientId: string): boolean {
    const m = this.own((x) => x.clientId === clientId);
    if (!m || m.status !== 'sending') return false;
    m.status = 'failed';
    return true;
  }

  delivered(id: string): boolean {
    const m = this.own((x) => x.id === id);
    if (!m) this.remember(id, 'delivered');
    return m ? this.raise(m, 'delivered') : false;
  }

  /** The partner read up to and including `id`: every own message up to it is read. */
  read(id: string): boolean {
    const end = this.messages.findIndex((m) => m.from === 'me' && m.id === id);
    if (end < 0) {
      this.remember(id, 'read');
      return false;
    }
    let changed = false;
    for (let i = 0; i <= end; i++) {
      const m = this.messages[i];
      if (m.from === 'me' && m.id !== undefined) changed = this.raise(m, 'read') || changed;
    }
    return changed;
  }

  /**
   * The partner messages now on screen: returns the id to report with `chat:message:read` (the
   * newest of them) when it is newer than the last one reported, else null.
   */
  readMarker(visibleIds: Iterable<string>): string | null {
    const visible = new Set(visibleIds);
    let newest = -1;
    this.messages.forEach((m, i) => {
      if (m.from === 'partner' && m.id !== undefined && visible.has(m.id)) newest = i;
    });
    if (newest < 0) return null;
    const last =
      this.lastReadSent === null
        ? -1
        : this.messages.findIndex((m) => m.from === 'partner' && m.id === this.lastReadSent);
    if (newest <= last) return null;
    const id = this.messages[newest].id as string;
    this.lastReadSent = id;
    return id;
  }
}

/**
 * When to send `typing:start` / `typing:stop`: at most one start every 3 s while the person types,
 * a stop when the message is sent, the field loses focus or is emptied (only after a start).
 */
export class TypingSender {
  private lastStart: number | null = null;

  constructor(private readonly intervalMs = 3000) {}

  /** A keystroke at `now`: true when a `typing:start` should go out. */
  input(now: number): boolean {
    if (this.lastStart !== null && now - this.lastStart < this.intervalMs) return false;
    this.lastStart = now;
    return true;
  }

  /** Send, blur or empty field: true when a `typing:stop` should go out. */
  stop(): boolean {
    const was = this.lastStart !== null;
    this.lastStart = null;
    return was;
  }
}

/** Reads the interests field: comma-separated tags, trimmed, empty ones dropped, duplicates
 * (case-insensitive) removed. Returns an error text when it breaks the server's rule. */
export function parseInterests(raw: string): { ok: true; tags: string[] } | { ok: false; error: string } {
  const tags: string[] = [];
  const seen = new Set<string>();
  for (const part of raw.split(',')) {
    const t = part.trim();
    if (t === '') continue;
    if ([...t].length > 24) return { ok: false, error: `“${t.slice(0, 24)}…” is too long: interests are at most 24 characters.` };
    const key = t.toLowerCase();
    if (seen.has(key)) continue;
    seen.add(key);
    tags.push(t);
  }
  if (tags.length > 5) return { ok: false, error: 'At most 5 interests.' };
  return { ok: true, tags };
}

/** The same rule as the server's for nicknames: 1–24 letters, digits, spaces, `_` or `-`. */
export function checkNickname(raw: string): { ok: true; name: string | null } | { ok: false; error: string } {
  const name = raw.trim();
  if (name === '') return { ok: true, name: null };
  if ([...name].length > 24 || !/^[\p{L}\p{N} _-]+$/u.test(name)) {
    return { ok: false, error: 'A nickname is 1–24 letters, digits, spaces, “_” or “-”.' };
  }
  return { ok: true, name };
}
