// tandem's page: guest token, Socket.IO connection (the official client), matching, chat with
// receipts and typing, files and voice notes, live statistics, calls through tandem's media
// server, and staying alive across reconnects and reloads. The wire contract is docs/protocol.md.

import { io, type Socket } from 'socket.io-client';
import { Attachments } from './attachments';
import { Backoff } from './backoff';
import { parseCandidate } from './candidates';
import {
  IDLE,
  canStart,
  describeCall,
  isActive,
  mediaWanted,
  reduceCall,
  type CallInput,
  type CallView,
} from './call';
import { ChatLog, TypingSender, checkNickname, parseInterests, type ChatMsg } from './chat';
import { describeError, describeMediaError, describeUploadError } from './errors';
import {
  DEFAULT_LIMITS,
  checkBeforeUpload,
  fileType,
  formatDuration,
  parseFileObject,
  parseLimits,
  spokenDuration,
  voiceFileName,
  type FileLimits,
} from './files';
import { CallMedia } from './media';
import { load, readRoom, save, type Guest, type Saved } from './storage';
import { VoiceRecorder, upload } from './upload';

type View = 'lobby' | 'searching' | 'chat';
type Conn = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'offline';

interface Ack {
  ok: boolean;
  error?: { code: string; message: string };
  [k: string]: unknown;
}

const ACK_TIMEOUT_MS = 10_000;
const TYPING_SHOWN_MS = 6_000;
const CALL_NOTICE_MS = 5_000;

/** A file waiting to be sent (files go out one at a time, in order). */
interface PendingUpload {
  blob: Blob;
  name: string;
  kind: 'file' | 'voice';
  durationMs?: number;
  /** The room it was meant for: dropped when the chat has changed. */
  roomId: string;
}

function $<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page has no #${id}`);
  return el as T;
}

function randomId(): string {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

const obj = (v: unknown): Record<string, unknown> =>
  typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : {};

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
  ) {
    super(code);
  }
}

async function api(path: string, init: { method?: string; token?: string; body?: unknown } = {}): Promise<unknown> {
  const headers: Record<string, string> = {};
  if (init.token) headers.Authorization = `Bearer ${init.token}`;
  if (init.body !== undefined) headers['Content-Type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(path, {
      method: init.method ?? 'GET',
      headers,
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
    });
  } catch {
    throw new HttpError(0, 'network');
  }
  const body: unknown = await res.json().catch(() => null);
  if (!res.ok) {
    const code = obj(obj(body).error).code;
    throw new HttpError(res.status, typeof code === 'string' ? code : 'network');
  }
  return body;
}

function readGuest(v: unknown): Guest {
  const o = obj(v);
  const s = (k: string): string => (typeof o[k] === 'string' ? (o[k] as string) : '');
  return { token: s('token'), sessionId: s('sessionId'), username: s('username'), expiresAt: s('expiresAt') };
}

class App {
  private saved: Saved = load(sessionStorage);
  private socket: Socket | null = null;
  private readonly backoff = new Backoff();
  private retryTimer: number | undefined;
  private refreshTimer: number | undefined;
  private conn: Conn = 'idle';
  private view: View = 'lobby';
  private chat = new ChatLog(this.saved.messages, this.saved.lastReadSent);
  private readonly typing = new TypingSender();
  private typingHide: number | undefined;
  private call: CallView = IDLE;
  private callClear: number | undefined;
  private media: CallMedia | null = null;
  /** Bumped whenever the media of a call is torn down, so late getUserMedia results are dropped. */
  private mediaEpoch = 0;
  private muted = false;
  private cameraOff = false;
  /** `match:start` to send once connected (the person pressed Start before the socket was up). */
  private pendingStart: string[] | null = null;
  private readonly visible = new Set<string>();
  private observer: IntersectionObserver | null = null;
  private statsTimer: number | undefined;
  private busy = false;
  private readonly attachments = new Attachments({
    token: () => this.saved.guest?.token ?? null,
    resized: () => this.keepScrolled(),
    error: (text) => this.error(text),
  });
  /** Whether the message list is scrolled to its end (it then follows new content). */
  private stick = true;
  private readonly uploadQueue: PendingUpload[] = [];
  private uploading: { abort(): void } | null = null;
  private recorder: VoiceRecorder | null = null;
  private recordTimer: number | undefined;
  /** dragenter/dragleave depth over the chat (children fire their own pairs). */
  private dragDepth = 0;
  /** The server's file limits (`GET /api/limits`), the defaults until it answers. */
  private limits: FileLimits = DEFAULT_LIMITS;

  start(): void {
    this.bindUi();
    void this.loadLimits();
    $<HTMLInputElement>('interests').value = this.saved.interests;
    if ('IntersectionObserver' in window) {
      this.observer = new IntersectionObserver((entries) => this.onVisibility(entries), { threshold: 0.5 });
    }
    document.addEventListener('visibilitychange', () => this.sendReadMarker());
    window.addEventListener('offline', () => this.goOffline());
    window.addEventListener('online', () => this.retryNow());
    if (this.saved.guest) {
      // A reload: show what this tab had while the connection comes back.
      if (this.saved.room) this.setView('chat');
      this.renderMessages();
      this.connect();
    } else {
      this.pollStats();
    }
    this.render();
  }

  // ---------------------------------------------------------------- connection

  private setConn(c: Conn, text?: string): void {
    this.conn = c;
    const el = $('conn-status');
    el.dataset.state = c;
    el.textContent =
      text ??
      { idle: 'Not connected', connecting: 'Connecting…', connected: 'Connected', reconnecting: 'Reconnecting…', offline: 'Offline' }[c];
    $('retry').hidden = c !== 'offline';
    if (c !== 'connected' && this.saved.room) {
      // Whether the partner is still there is unknown until this page is back.
      const st = $('partner-status');
      st.dataset.state = 'unknown';
      st.textContent = '';
    }
    this.render();
  }

  private connect(): void {
    if (!this.saved.guest) return;
    window.clearTimeout(this.retryTimer);
    window.clearTimeout(this.statsTimer);
    if (!this.socket) {
      this.socket = io({
        auth: (cb) => cb({ token: this.saved.guest?.token ?? '' }),
        // WebSocket first: one connection, so that a load balancer in front of several tandem
        // nodes needs no sticky sessions. Long-polling only where WebSocket cannot get through
        // (its requests must then reach one node: see deploy/README.md).
        transports: ['websocket', 'polling'],
        tryAllTransports: true,
        reconnection: false,
        autoConnect: false,
      });
      this.bindSocket(this.socket);
    }
    this.setConn(this.backoff.used === 0 ? 'connecting' : 'reconnecting');
    this.socket.connect();
    this.scheduleRefresh();
  }

  private scheduleReconnect(): void {
    window.clearTimeout(this.retryTimer);
    // Retry even when the browser claims to be offline: that flag is often wrong (e.g. a machine
    // whose only network is loopback); an `online` event retries at once anyway.
    const delay = this.backoff.next();
    if (delay === null) {
      this.setConn('offline', 'Offline: cannot reach tandem');
      return;
    }
    this.setConn('reconnecting', `Reconnecting in ${Math.round(delay / 1000)} s… (attempt ${this.backoff.used} of 10)`);
    this.retryTimer = window.setTimeout(() => this.connect(), delay);
  }

  private retryNow(): void {
    window.clearTimeout(this.retryTimer);
    this.backoff.reset();
    if (this.socket?.connected) return;
    if (this.saved.guest) this.connect();
    else this.setConn('idle');
  }

  private goOffline(): void {
    window.clearTimeout(this.retryTimer);
    // Drop the socket at once so the partner sees "away" and nothing is sent into the void.
    this.socket?.disconnect();
    if (this.saved.guest) this.setConn('offline', 'Offline: no network');
  }

  private authFailures = 0;

  private async onUnauthorized(): Promise<void> {
    const guest = this.saved.guest;
    if (!guest) return;
    this.authFailures += 1;
    // A refreshed token that is still refused (twice) means the session cannot be saved.
    if (this.authFailures <= 2) {
      try {
        this.saved.guest = readGuest(await api('/api/guest/refresh', { method: 'POST', token: guest.token }));
        this.persist();
        this.connect();
        return;
      } catch (e) {
        if (!(e instanceof HttpError) || e.status !== 401) {
          this.scheduleReconnect();
          return;
        }
      }
    }
    // The session is gone: a new guest under the same name; the old chat cannot come back.
    this.notice('Your session expired, so you have a new one. Your previous chat has ended.');
    this.endRoomLocally();
    try {
      const name = checkNickname(guest.username);
      this.saved.guest = readGuest(
        await api('/api/guest', { method: 'POST', body: name.ok && name.name ? { username: name.name } : {} }),
      );
    } catch (e) {
      this.saved.guest = null;
      this.persist();
      this.setConn('idle');
      this.error(describeError(e instanceof HttpError ? e.code : 'network'));
      return;
    }
    this.persist();
    this.connect();
  }

  private scheduleRefresh(): void {
    window.clearTimeout(this.refreshTimer);
    const guest = this.saved.guest;
    if (!guest) return;
    const expires = Date.parse(guest.expiresAt);
    if (Number.isNaN(expires)) return;
    // Refresh 10 minutes before expiry (at least 30 s from now).
    const wait = Math.max(30_000, expires - Date.now() - 10 * 60_000);
    this.refreshTimer = window.setTimeout(() => void this.refreshToken(), Math.min(wait, 2 ** 31 - 1));
  }

  private async refreshToken(): Promise<void> {
    const guest = this.saved.guest;
    if (!guest) return;
    try {
      this.saved.guest = readGuest(await api('/api/guest/refresh', { method: 'POST', token: guest.token }));
      this.persist();
    } catch {
      // The next connect will sort it out (refresh again, or a new guest).
    }
    this.scheduleRefresh();
  }

  private pollStats(): void {
    window.clearTimeout(this.statsTimer);
    if (this.socket?.connected) return;
    api('/api/stats')
      .then((s) => this.renderStats(s))
      .catch(() => undefined);
    this.statsTimer = window.setTimeout(() => this.pollStats(), 10_000);
  }

  private emit(event: string, payload?: unknown): Promise<Ack> {
    return new Promise((resolve) => {
      const s = this.socket;
      if (!s) {
        resolve({ ok: false, error: { code: 'network', message: '' } });
        return;
      }
      const done = (err: unknown, res: unknown): void => {
        if (err) resolve({ ok: false, error: { code: 'timeout', message: '' } });
        else resolve(obj(res) as Ack);
      };
      if (payload === undefined) s.timeout(ACK_TIMEOUT_MS).emit(event, done);
      else s.timeout(ACK_TIMEOUT_MS).emit(event, payload, done);
    });
  }

  /** Sends an event; a refusal is shown to the person. Returns the ack. */
  private async request(event: string, payload?: unknown, quiet: string[] = []): Promise<Ack> {
    const ack = await this.emit(event, payload);
    if (!ack.ok) {
      const code = ack.error?.code ?? 'network';
      if (!quiet.includes(code)) this.error(describeError(code, ack.error?.message));
    }
    return ack;
  }

  private bindSocket(s: Socket): void {
    s.on('connect', () => {
      this.backoff.reset();
      this.authFailures = 0;
      this.setConn('connected');
      this.error('');
    });
    s.on('connect_error', (err: Error) => {
      switch (err.message) {
        case 'unauthorized':
          void this.onUnauthorized();
          break;
        case 'origin_not_allowed':
          this.setConn('offline', 'Not allowed');
          this.error(describeError('origin_not_allowed'));
          break;
        case 'rate_limited':
        case 'server_busy':
          this.error(describeError(err.message));
          this.scheduleReconnect();
          break;
        default:
          this.scheduleReconnect();
      }
    });
    s.on('disconnect', (reason: string) => {
      this.showTyping(false);
      if (reason === 'io client disconnect') return;
      this.scheduleReconnect();
    });
    s.on('connection:established', (p: unknown) => this.onEstablished(obj(p)));
    s.on('realtime:stats', (p: unknown) => this.renderStats(p));
    s.on('match:searching', () => this.setView('searching'));
    s.on('match:found', (p: unknown) => {
      const room = readRoom(p);
      if (room) this.enterRoom(room, true);
    });
    s.on('chat:ended', (p: unknown) => this.onChatEnded(obj(p)));
    s.on('chat:message', (p: unknown, ack?: (v?: unknown) => void) => {
      this.onMessage(obj(p));
      if (typeof ack === 'function') ack({ ok: true });
    });
    s.on('chat:message:sent', (p: unknown) => {
      const o = obj(p);
      if (typeof o.clientId === 'string' && typeof o.id === 'string') {
        if (this.chat.sent(o.clientId, o.id, typeof o.timestamp === 'number' ? o.timestamp : Date.now())) this.changed();
      }
    });
    s.on('chat:message:delivered', (p: unknown) => {
      const id = obj(p).id;
      if (typeof id === 'string' && this.chat.delivered(id)) this.changed();
    });
    s.on('chat:message:read', (p: unknown) => {
      const id = obj(p).id;
      if (typeof id === 'string' && this.chat.read(id)) this.changed();
    });
    s.on('typing:start', () => this.showTyping(true));
    s.on('typing:stop', () => this.showTyping(false));
    s.on('partner:presence', (p: unknown) => {
      const status = obj(p).status === 'away' ? 'away' : 'online';
      this.setPartnerStatus(status);
      if (status === 'away') this.showTyping(false);
    });
    s.on('call:incoming', (p: unknown) => {
      this.callInput({ type: 'incoming', video: obj(p).video === true });
      $('call-accept').focus();
    });
    s.on('call:accepted', () => this.callInput({ type: 'accepted' }));
    s.on('call:ended', (p: unknown) => {
      const r = obj(p).reason;
      const reason = r === 'rejected' || r === 'timeout' || r === 'failed' || r === 'partner_left' ? r : 'hangup';
      this.callInput({ type: 'ended', reason });
    });
    s.on('webrtc:answer', (p: unknown) => {
      const sdp = obj(p).sdp;
      if (typeof sdp === 'string') void this.media?.onAnswer(sdp);
    });
    s.on('webrtc:offer', (p: unknown) => {
      const sdp = obj(p).sdp;
      if (typeof sdp === 'string') void this.media?.onOffer(sdp);
    });
    s.on('webrtc:ice-candidate', (p: unknown) => {
      const c = parseCandidate(p);
      if (c) this.media?.onCandidate(c);
    });
    s.on('server:shutdown', () => this.notice('tandem is restarting. Reconnecting shortly…'));
    s.on('error', (p: unknown) => {
      const o = obj(p);
      const code = typeof o.code === 'string' ? o.code : '';
      if (code === 'unauthorized') return; // the socket closes next; reconnecting renews the session
      if (code === 'invalid_sdp' && o.event === 'webrtc:offer') {
        this.error(describeError('invalid_sdp'));
        return;
      }
      this.error(describeError(code, typeof o.message === 'string' ? o.message : undefined));
    });
  }

  private onEstablished(p: Record<string, unknown>): void {
    if (this.saved.guest && typeof p.username === 'string') {
      this.saved.guest.username = p.username;
      $('me-name').textContent = p.username;
    }
    const state = p.state;
    const room = state === 'in_chat' ? readRoom(p.room) : null;
    if (room) {
      const same = this.saved.room?.roomId === room.roomId;
      this.enterRoom(room, !same);
      const call = obj(obj(p.room).call);
      const resumed = typeof call.state === 'string' ? { state: call.state, video: call.video === true } : null;
      if (!resumed && this.saved.call && !isActive(this.call)) {
        this.notice('The call ended while you were away.');
        this.saved.call = null;
        this.persist();
      }
      this.serverCallState = resumed?.state ?? null;
      this.callInput({ type: 'resume', call: resumed });
      return;
    }
    if (this.saved.room) {
      this.endRoomLocally();
      this.notice('The chat ended while you were away.');
    }
    if (state === 'searching') {
      this.setView('searching');
      return;
    }
    this.setView('lobby');
    if (this.pendingStart) {
      const tags = this.pendingStart;
      this.pendingStart = null;
      void this.startSearch(tags);
    }
  }

  // ---------------------------------------------------------------- matching

  private async onStartClicked(): Promise<void> {
    if (this.busy) return;
    this.error('');
    const interests = parseInterests($<HTMLInputElement>('interests').value);
    if (!interests.ok) {
      this.error(interests.error);
      $('interests').focus();
      return;
    }
    this.saved.interests = $<HTMLInputElement>('interests').value;
    this.persist();
    if (!this.saved.guest) {
      const nick = checkNickname($<HTMLInputElement>('nickname').value);
      if (!nick.ok) {
        this.error(nick.error);
        $('nickname').focus();
        return;
      }
      this.busy = true;
      this.render();
      try {
        this.saved.guest = readGuest(await api('/api/guest', { method: 'POST', body: nick.name ? { username: nick.name } : {} }));
        this.persist();
      } catch (e) {
        this.error(describeError(e instanceof HttpError ? e.code : 'network'));
        return;
      } finally {
        this.busy = false;
        this.render();
      }
      $('me-name').textContent = this.saved.guest.username;
      this.pendingStart = interests.tags;
      this.connect();
      return;
    }
    if (!this.socket?.connected) {
      this.pendingStart = interests.tags;
      this.retryNow();
      return;
    }
    await this.startSearch(interests.tags);
  }

  private async startSearch(tags: string[]): Promise<void> {
    const ack = await this.request('match:start', tags.length ? { interests: tags } : {}, ['already_searching', 'already_in_chat']);
    if (ack.ok && ack.state === 'searching') this.setView('searching');
  }

  private async next(): Promise<void> {
    const interests = parseInterests(this.saved.interests);
    const tags = interests.ok ? interests.tags : [];
    // Forget the room first: with an instant match, `match:found` may arrive before the ack.
    this.endRoomLocally();
    this.setView('searching');
    const ack = await this.request('match:next', tags.length ? { interests: tags } : {});
    if (!ack.ok && !this.saved.room) this.setView(ack.error?.code === 'not_in_chat' ? 'lobby' : this.view);
  }

  private enterRoom(room: { roomId: string; partner: { username: string } }, fresh: boolean): void {
    if (fresh) {
      this.chat = new ChatLog();
      this.cancelUploads();
      void this.stopRecording(false);
      this.visible.clear();
      this.endCallLocally('lost');
      this.notice('');
    }
    this.saved.room = room;
    $('partner-name').textContent = room.partner.username;
    this.setPartnerStatus('online');
    this.setView('chat');
    this.changed();
    if (fresh) $('message-input').focus();
  }

  private onChatEnded(p: Record<string, unknown>): void {
    if (typeof p.roomId === 'string' && this.saved.room && p.roomId !== this.saved.room.roomId) return;
    const text: Record<string, string> = {
      left: 'The chat ended.',
      skipped: 'The chat ended.',
      disconnected: 'The stranger disconnected.',
      reported: 'The chat ended after a report.',
    };
    this.notice(text[String(p.reason)] ?? 'The chat ended.');
    this.endRoomLocally();
    if (this.view === 'chat') this.setView('lobby');
  }

  /** Forgets the room (the server has already ended it or will). */
  private endRoomLocally(): void {
    this.endCallLocally('partner_left');
    this.cancelUploads();
    void this.stopRecording(false);
    this.saved.room = null;
    this.chat = new ChatLog();
    this.visible.clear();
    this.showTyping(false);
    $('report-box').hidden = true;
    this.changed();
  }

  private async leave(): Promise<void> {
    this.endCallLocally('hangup');
    const ack = await this.request('chat:leave', undefined, ['not_in_chat']);
    if (ack.ok || ack.error?.code === 'not_in_chat') {
      this.endRoomLocally();
      this.setView('lobby');
    }
  }

  private async report(): Promise<void> {
    const reason = $<HTMLInputElement>('report-reason').value.trim();
    this.endCallLocally('hangup');
    const ack = await this.request('chat:report', reason ? { reason } : {});
    if (ack.ok) {
      $<HTMLInputElement>('report-reason').value = '';
      this.endRoomLocally();
      this.setView('lobby');
      this.notice('Thank you. You will not be matched with this stranger again.');
    }
  }

  // ---------------------------------------------------------------- chat

  private onMessage(p: Record<string, unknown>): void {
    const id = typeof p.id === 'string' ? p.id : '';
    const content = typeof p.content === 'string' ? p.content : '';
    const ts = typeof p.timestamp === 'number' ? p.timestamp : Date.now();
    const type = p.from === 'partner' ? fileType(p.type) : null;
    if (type) {
      // A file or voice note: `content` is the file object.
      if (!this.saved.room || (typeof p.roomId === 'string' && p.roomId !== this.saved.room.roomId)) return;
      this.showTyping(false);
      const file = parseFileObject(p.content);
      const added = file
        ? this.chat.addIncoming('partner', id, '', ts, { type, file })
        : this.chat.addIncoming('partner', id, 'The stranger sent a file this page cannot show.', ts);
      if (added) this.changed();
      return;
    }
    if (p.from === 'system') {
      if (this.saved.room && (p.roomId === undefined || p.roomId === this.saved.room.roomId)) {
        if (this.chat.addIncoming('system', id, content, ts)) this.changed();
      } else {
        this.notice(content);
      }
      return;
    }
    if (!this.saved.room || (typeof p.roomId === 'string' && p.roomId !== this.saved.room.roomId)) return;
    this.showTyping(false);
    if (this.chat.addIncoming('partner', id, content, ts)) this.changed();
  }

  private async send(): Promise<void> {
    const input = $<HTMLTextAreaElement>('message-input');
    const text = input.value.trim();
    if (text === '' || !this.saved.room) return;
    if ([...text].length > 2000) {
      this.error(describeError('invalid_message'));
      return;
    }
    input.value = '';
    this.autosize();
    if (this.typing.stop()) void this.emit('typing:stop');
    const clientId = randomId();
    this.chat.addOwn(clientId, text, Date.now());
    this.changed();
    const ack = await this.request('chat:message', { clientId, type: 'text', content: text });
    if (ack.ok && typeof ack.id === 'string') {
      if (this.chat.sent(clientId, ack.id, typeof ack.timestamp === 'number' ? ack.timestamp : Date.now())) this.changed();
    } else if (this.chat.failed(clientId)) {
      this.changed();
    }
  }

  // ---------------------------------------------------------------- files and voice notes

  /** Asks the server for its file limits (a failure keeps the defaults; the server checks anyway). */
  private async loadLimits(): Promise<void> {
    try {
      this.limits = parseLimits(await api('/api/limits'));
    } catch {
      // keep the defaults
    }
  }

  /** Files chosen, dropped or pasted: each is checked, then queued. */
  private sendFiles(files: Iterable<File>): void {
    for (const f of files) {
      const refused = checkBeforeUpload(f.size, this.limits.maxFileBytes);
      if (refused) {
        this.error(`${f.name}: ${describeUploadError(refused, null, this.limits)}`);
        continue;
      }
      this.queueUpload({ blob: f, name: f.name, kind: 'file' });
    }
  }

  private queueUpload(u: Omit<PendingUpload, 'roomId'>): void {
    const room = this.saved.room;
    if (!room) return;
    this.error('');
    this.uploadQueue.push({ ...u, roomId: room.roomId });
    void this.pumpUploads();
  }

  private async pumpUploads(): Promise<void> {
    if (this.uploading) return;
    const next = this.uploadQueue.shift();
    if (!next) return;
    const token = this.saved.guest?.token;
    if (!token || this.saved.room?.roomId !== next.roomId) {
      void this.pumpUploads();
      return;
    }
    const clientId = randomId();
    const label = next.kind === 'voice' ? 'voice note' : next.name;
    const up = upload({
      token,
      blob: next.blob,
      name: next.name,
      kind: next.kind,
      durationMs: next.durationMs,
      clientId,
      onProgress: (f) => this.renderUpload(label, f),
    });
    this.uploading = up;
    this.renderUpload(label, 0);
    const res = await up.result;
    if (this.uploading !== up) return; // cancelled together with the room
    this.uploading = null;
    this.renderUpload(null, 0);
    if (res.ok) {
      if (this.saved.room?.roomId === next.roomId) {
        const type = next.kind === 'voice' ? 'voice' : 'file';
        this.attachments.adopt(type, res.file, next.blob);
        if (this.chat.addOwnFile(clientId, res.messageId, res.timestamp, type, res.file)) this.changed();
      }
    } else if (res.aborted) {
      this.notice(`Sending ${label} was cancelled.`);
    } else {
      this.error(`${next.kind === 'voice' ? 'Voice note' : next.name}: ${describeUploadError(res.code, res.retryAfter, this.limits)}`);
      if (res.code === 'unauthorized') void this.refreshToken();
    }
    void this.pumpUploads();
  }

  /** Stops the upload under way and forgets the queued ones. */
  private cancelUploads(): void {
    this.uploadQueue.length = 0;
    const up = this.uploading;
    this.uploading = null;
    up?.abort();
    this.renderUpload(null, 0);
  }

  /** `label` null: nothing is being sent. */
  private renderUpload(label: string | null, fraction: number): void {
    const box = $('upload');
    const bar = $<HTMLProgressElement>('upload-progress');
    box.hidden = label === null;
    bar.hidden = label === null;
    if (label === null) return;
    bar.value = Math.min(1, Math.max(0, fraction));
    $('upload-label').textContent = `Sending ${label}… ${Math.round(bar.value * 100)}%`;
  }

  private async toggleRecording(): Promise<void> {
    if (this.recorder) {
      await this.stopRecording(true);
      return;
    }
    if (!this.saved.room) return;
    if (!VoiceRecorder.supported()) {
      this.error(describeUploadError('no_recorder'));
      return;
    }
    this.error('');
    const rec = new VoiceRecorder(this.limits.maxVoiceMs);
    this.recorder = rec;
    this.renderRecording();
    try {
      await rec.start();
    } catch (err) {
      if (this.recorder === rec) {
        this.recorder = null;
        this.renderRecording();
        this.error(describeMediaError(err, 'voice'));
      }
      return;
    }
    if (this.recorder !== rec) return; // discarded while the microphone was being asked for
    window.clearInterval(this.recordTimer);
    this.recordTimer = window.setInterval(() => {
      if (rec.elapsed() >= this.limits.maxVoiceMs) {
        this.notice(`Voice notes are at most ${spokenDuration(this.limits.maxVoiceMs)} long: this one was sent.`);
        void this.stopRecording(true);
      } else {
        this.renderRecording();
      }
    }, 250);
    this.renderRecording();
  }

  /** Stops recording: sends the voice note (`send`) or throws it away. */
  private async stopRecording(send: boolean): Promise<void> {
    const rec = this.recorder;
    if (!rec) return;
    this.recorder = null;
    window.clearInterval(this.recordTimer);
    this.renderRecording();
    if (!send) {
      rec.cancel();
      return;
    }
    const out = await rec.stop();
    if (!out) {
      this.error('Nothing was recorded.');
      return;
    }
    this.queueUpload({ blob: out.blob, name: voiceFileName(out.mime), kind: 'voice', durationMs: out.durationMs });
  }

  private renderRecording(): void {
    const rec = this.recorder;
    const button = $('record');
    button.setAttribute('aria-pressed', String(rec !== null));
    button.setAttribute('aria-label', rec ? 'Stop recording and send' : 'Record a voice note');
    button.title = rec ? 'Stop recording and send the voice note' : 'Record a voice note (up to 5 minutes)';
    $('composer').classList.toggle('recording', rec !== null);
    $('record-time').hidden = rec === null;
    $('record-cancel').hidden = rec === null;
    if (rec) $('record-time').textContent = formatDuration(rec.elapsed(), 'floor');
    this.render();
  }

  private canSendFiles(): boolean {
    return this.view === 'chat' && this.saved.room !== null && this.conn === 'connected';
  }

  private bindFiles(): void {
    const input = $<HTMLInputElement>('file-input');
    $('attach').addEventListener('click', () => input.click());
    input.addEventListener('change', () => {
      const files = [...(input.files ?? [])];
      input.value = '';
      if (this.canSendFiles()) this.sendFiles(files);
    });
    $('upload-cancel').addEventListener('click', () => {
      const up = this.uploading;
      this.uploading = null;
      up?.abort();
      this.renderUpload(null, 0);
      this.notice('Sending was cancelled.');
      void this.pumpUploads();
    });
    $('record').addEventListener('click', () => void this.toggleRecording());
    $('record-cancel').addEventListener('click', () => {
      void this.stopRecording(false);
      this.notice('The voice note was discarded.');
      $('record').focus();
    });
    $('message-input').addEventListener('paste', (e) => {
      const files = [...(e.clipboardData?.files ?? [])];
      if (files.length === 0 || !this.canSendFiles()) return;
      e.preventDefault();
      this.sendFiles(files);
    });
    // Drag and drop onto the chat.
    const chat = $('chat');
    const hasFiles = (e: DragEvent): boolean => [...(e.dataTransfer?.types ?? [])].includes('Files');
    const highlight = (on: boolean): void => {
      chat.classList.toggle('dropping', on);
      $('drop-hint').hidden = !on;
    };
    chat.addEventListener('dragenter', (e) => {
      if (!hasFiles(e) || !this.canSendFiles()) return;
      e.preventDefault();
      this.dragDepth += 1;
      highlight(true);
    });
    chat.addEventListener('dragover', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      if (e.dataTransfer) e.dataTransfer.dropEffect = this.canSendFiles() ? 'copy' : 'none';
    });
    chat.addEventListener('dragleave', (e) => {
      if (!hasFiles(e)) return;
      this.dragDepth = Math.max(0, this.dragDepth - 1);
      if (this.dragDepth === 0) highlight(false);
    });
    chat.addEventListener('drop', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      this.dragDepth = 0;
      highlight(false);
      if (this.canSendFiles()) this.sendFiles([...(e.dataTransfer?.files ?? [])]);
    });
    // A file dropped anywhere else must not make the browser leave the chat to open it.
    window.addEventListener('dragover', (e) => e.preventDefault());
    window.addEventListener('drop', (e) => {
      e.preventDefault();
      this.dragDepth = 0;
      highlight(false);
    });
    $('messages').addEventListener('scroll', () => {
      const list = $('messages');
      this.stick = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    });
  }

  /** Content grew (an image loaded): stay at the end if the person was there. */
  private keepScrolled(): void {
    if (!this.stick) return;
    const list = document.getElementById('messages');
    if (list) list.scrollTop = list.scrollHeight;
  }

  private onTyping(): void {
    if (!this.saved.room) return;
    const input = $<HTMLTextAreaElement>('message-input');
    if (input.value.trim() === '') {
      if (this.typing.stop()) void this.emit('typing:stop');
    } else if (this.typing.input(Date.now())) {
      void this.emit('typing:start');
    }
    this.autosize();
  }

  private showTyping(on: boolean): void {
    window.clearTimeout(this.typingHide);
    $('typing').hidden = !on;
    // A safety net: the server sends typing:stop itself after 5 s.
    if (on) this.typingHide = window.setTimeout(() => ($('typing').hidden = true), TYPING_SHOWN_MS);
  }

  private setPartnerStatus(s: 'online' | 'away'): void {
    const el = $('partner-status');
    el.dataset.state = s;
    el.textContent = s === 'away' ? 'away — waiting for them to reconnect…' : 'online';
  }

  private onVisibility(entries: IntersectionObserverEntry[]): void {
    for (const e of entries) {
      const id = (e.target as HTMLElement).dataset.id;
      if (!id) continue;
      if (e.isIntersecting) this.visible.add(id);
      else this.visible.delete(id);
    }
    this.sendReadMarker();
  }

  /** Tells the partner how far this person has read: the newest partner message on screen. */
  private sendReadMarker(): void {
    if (document.visibilityState !== 'visible' || !this.saved.room || !this.socket?.connected) return;
    const id = this.chat.readMarker(this.visible);
    if (!id) return;
    this.persist();
    void this.emit('chat:message:read', { id });
  }

  // ---------------------------------------------------------------- calls

  private callInput(input: CallInput): void {
    const before = this.call;
    this.call = reduceCall(before, input);
    if (this.call === before) return;
    window.clearTimeout(this.callClear);
    if (mediaWanted(this.call)) {
      if (!mediaWanted(before) || input.type === 'resume') void this.ensureMedia(input.type === 'resume');
    } else if (!isActive(this.call)) {
      this.stopMedia();
      this.callClear = window.setTimeout(() => this.callInput({ type: 'clear' }), CALL_NOTICE_MS);
    }
    this.saved.call = isActive(this.call) ? { video: this.call.video } : null;
    this.persist();
    this.renderCall();
  }

  /** Ends the call on this page at once (the server ends it too, for its own reasons). */
  private endCallLocally(reason: 'hangup' | 'partner_left' | 'lost'): void {
    if (isActive(this.call)) this.callInput({ type: 'ended', reason });
  }

  private async startCall(video: boolean): Promise<void> {
    if (!canStart(this.call) || !this.saved.room) return;
    this.error('');
    const ack = await this.request('call:request', { video });
    if (!ack.ok) return;
    this.callInput({ type: 'request', video });
    // Ask for the camera/microphone while it rings, so the call starts at once when accepted.
    void this.prepareLocal(video);
  }

  private async accept(): Promise<void> {
    const ack = await this.request('call:accept', undefined, ['no_call']);
    if (!ack.ok && ack.error?.code === 'no_call') this.callInput({ type: 'ended', reason: 'hangup' });
  }

  private async reject(): Promise<void> {
    await this.request('call:reject', undefined, ['no_call']);
    this.callInput({ type: 'ended', reason: 'rejected' });
  }

  private async hangup(): Promise<void> {
    this.callInput({ type: 'ended', reason: 'hangup' });
    await this.request('call:end', undefined, ['no_call', 'not_in_chat']);
  }

  private localStream: Promise<MediaStream> | null = null;
  /** This side's call state as the server last told it (on connect). */
  private serverCallState: string | null = null;

  private prepareLocal(video: boolean): Promise<MediaStream> {
    if (!this.localStream) {
      this.localStream = CallMedia.acquire(video);
      this.localStream.catch(() => undefined);
    }
    return this.localStream;
  }

  /** The call is accepted (or resumed): camera/microphone, then the peer connection and offer. */
  private async ensureMedia(resume: boolean): Promise<void> {
    if (this.media) {
      if (!resume) return;
      // Back after a socket drop: keep a media path that never broke, else restart ICE.
      if (this.serverCallState === 'connected' && this.media.connectionState === 'connected') {
        this.callInput({ type: 'media', state: 'connected' });
      } else {
        void this.media.restartIce();
      }
      return;
    }
    const epoch = this.mediaEpoch;
    const video = this.call.video;
    let local: MediaStream;
    let iceServers: RTCIceServer[] = [];
    try {
      const [stream, servers] = await Promise.all([this.prepareLocal(video), this.iceServers()]);
      local = stream;
      iceServers = servers;
    } catch (err) {
      if (epoch !== this.mediaEpoch) return;
      this.error(describeMediaError(err));
      this.callInput({ type: 'ended', reason: 'media' });
      void this.request('call:end', undefined, ['no_call', 'not_in_chat']);
      return;
    }
    if (epoch !== this.mediaEpoch || !mediaWanted(this.call)) {
      for (const t of local.getTracks()) t.stop();
      return;
    }
    const media = new CallMedia(
      local,
      iceServers,
      {
        offer: (sdp) => void this.request('webrtc:offer', { sdp }, ['no_call', 'not_in_chat']),
        answer: (sdp) => void this.request('webrtc:answer', { sdp }, ['no_call', 'not_in_chat']),
        candidate: (c) => void this.emit('webrtc:ice-candidate', c),
      },
      {
        state: (s) => {
          if (this.media === media) this.callInput({ type: 'media', state: s });
        },
        remote: (stream) => {
          const v = $<HTMLVideoElement>('remote-video');
          if (v.srcObject !== stream) v.srcObject = stream;
          void v.play().catch(() => undefined);
        },
        error: (msg) => this.error(msg),
      },
    );
    this.media = media;
    media.setMuted(this.muted);
    media.setCameraOff(this.cameraOff);
    const lv = $<HTMLVideoElement>('local-video');
    lv.srcObject = local;
    void lv.play().catch(() => undefined);
    await media.start();
  }

  private async iceServers(): Promise<RTCIceServer[]> {
    const token = this.saved.guest?.token;
    if (!token) return [];
    try {
      const body = obj(await api('/api/ice-servers', { token }));
      return Array.isArray(body.iceServers) ? (body.iceServers as RTCIceServer[]) : [];
    } catch {
      // tandem's media server is reachable on host candidates without them.
      return [];
    }
  }

  private stopMedia(): void {
    this.mediaEpoch += 1;
    this.media?.close();
    this.media = null;
    const pending = this.localStream;
    this.localStream = null;
    pending?.then((s) => s.getTracks().forEach((t) => t.stop())).catch(() => undefined);
    $<HTMLVideoElement>('remote-video').srcObject = null;
    $<HTMLVideoElement>('local-video').srcObject = null;
    this.muted = false;
    this.cameraOff = false;
  }

  private toggleMute(): void {
    this.muted = !this.muted;
    this.media?.setMuted(this.muted);
    this.renderCall();
  }

  private toggleCamera(): void {
    this.cameraOff = !this.cameraOff;
    this.media?.setCameraOff(this.cameraOff);
    this.renderCall();
  }

  // ---------------------------------------------------------------- rendering

  private persist(): void {
    this.saved.messages = this.chat.messages;
    this.saved.lastReadSent = this.chat.lastReadSent;
    save(sessionStorage, this.saved);
  }

  private changed(): void {
    this.persist();
    this.renderMessages();
    this.render();
  }

  private notice(text: string): void {
    $('notice').textContent = text;
  }

  private error(text: string): void {
    $('error').textContent = text;
  }

  private setView(v: View): void {
    this.view = v;
    this.render();
  }

  private renderStats(p: unknown): void {
    const o = obj(p);
    const n = (k: string): string => (typeof o[k] === 'number' ? String(o[k]) : '–');
    $('stat-online').textContent = n('onlineUsers');
    $('stat-searching').textContent = n('availableUsers');
    $('stat-in-chat').textContent = n('connectedUsers');
  }

  private render(): void {
    $('app').dataset.view = this.view;
    const online = this.conn === 'connected';
    const inChat = this.view === 'chat' && this.saved.room !== null;
    const guest = this.saved.guest;
    $('me-line').hidden = !guest;
    if (guest) $('me-name').textContent = guest.username;
    $<HTMLInputElement>('nickname').disabled = guest !== null;
    $<HTMLInputElement>('nickname').closest('form')?.classList.toggle('has-guest', guest !== null);
    $<HTMLButtonElement>('start').disabled = this.busy;
    for (const id of ['send', 'next', 'leave', 'report']) $<HTMLButtonElement>(id).disabled = !inChat || !online;
    $<HTMLTextAreaElement>('message-input').disabled = !inChat;
    $<HTMLButtonElement>('attach').disabled = !inChat || !online;
    $<HTMLButtonElement>('record').disabled = (!inChat || !online) && this.recorder === null;
    this.renderCall();
  }

  private renderCall(): void {
    const c = this.call;
    const panel = $('call');
    panel.dataset.state = c.state;
    panel.dataset.video = String(c.video);
    $('call-status').textContent = describeCall(c);
    const inChat = this.view === 'chat' && this.saved.room !== null && this.conn === 'connected';
    $<HTMLButtonElement>('call-audio').disabled = !inChat || !canStart(c);
    $<HTMLButtonElement>('call-video').disabled = !inChat || !canStart(c);
    $('call-accept').hidden = c.state !== 'ringing';
    $('call-reject').hidden = c.state !== 'ringing';
    $('call-hangup').hidden = !(c.state === 'calling' || mediaWanted(c));
    $('call-mute').hidden = !mediaWanted(c);
    $('call-camera').hidden = !mediaWanted(c) || !c.video;
    const mute = $('call-mute');
    mute.setAttribute('aria-pressed', String(this.muted));
    mute.textContent = this.muted ? 'Unmute' : 'Mute';
    const cam = $('call-camera');
    cam.setAttribute('aria-pressed', String(this.cameraOff));
    cam.textContent = this.cameraOff ? 'Camera on' : 'Camera off';
  }

  private renderMessages(): void {
    const list = $('messages');
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const items = this.chat.messages.map((m) => this.renderMessage(m));
    this.observer?.disconnect();
    list.replaceChildren(...items);
    // The files of messages that are gone (chat ended, trimmed) free their blob: URLs.
    this.attachments.retain(this.chat.fileIds());
    for (const li of items) if (li.dataset.from === 'partner' && li.dataset.id) this.observer?.observe(li);
    if (atBottom || items.length < 2) list.scrollTop = list.scrollHeight;
    const last = this.chat.messages[this.chat.messages.length - 1];
    if (last?.from === 'me') list.scrollTop = list.scrollHeight;
  }

  private renderMessage(m: ChatMsg): HTMLLIElement {
    const li = document.createElement('li');
    li.className = `msg msg-${m.from}`;
    li.dataset.from = m.from;
    if (m.id) li.dataset.id = m.id;
    if (m.clientId) li.dataset.clientId = m.clientId;
    if (m.type && m.file) {
      li.dataset.type = m.type;
      li.classList.add('msg-file');
      li.append(this.attachments.element(m.type, m.file));
    } else {
      const text = document.createElement('span');
      text.className = 'msg-text';
      text.textContent = m.text;
      li.append(text);
    }
    if (m.from !== 'system') {
      const meta = document.createElement('span');
      meta.className = 'msg-meta';
      const time = document.createElement('time');
      const d = new Date(m.ts);
      time.dateTime = d.toISOString();
      time.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
      meta.append(time);
      if (m.from === 'me') {
        const r = document.createElement('span');
        const status = m.status ?? 'sending';
        r.className = 'receipt';
        r.dataset.status = status;
        const [glyph, label] = {
          sending: ['…', 'Sending'],
          sent: ['✓', 'Sent'],
          delivered: ['✓✓', 'Delivered'],
          read: ['✓✓', 'Read'],
          failed: ['!', 'Not sent'],
        }[status];
        r.textContent = glyph;
        r.title = label;
        r.setAttribute('aria-label', label);
        meta.append(r);
      }
      li.append(meta);
    }
    return li;
  }

  private autosize(): void {
    const t = $<HTMLTextAreaElement>('message-input');
    t.style.height = 'auto';
    t.style.height = `${Math.min(t.scrollHeight, 160)}px`;
  }

  private bindUi(): void {
    $('start-form').addEventListener('submit', (e) => {
      e.preventDefault();
      void this.onStartClicked();
    });
    $('cancel-search').addEventListener('click', async () => {
      const ack = await this.request('match:cancel', undefined, ['not_searching']);
      if (ack.ok || ack.error?.code === 'not_searching') this.setView('lobby');
    });
    $('next').addEventListener('click', () => void this.next());
    $('leave').addEventListener('click', () => void this.leave());
    $('report').addEventListener('click', () => {
      $('report-box').hidden = false;
      $('report-reason').focus();
    });
    $('report-cancel').addEventListener('click', () => {
      $('report-box').hidden = true;
      $('report').focus();
    });
    $('report-confirm').addEventListener('click', () => void this.report());
    $('composer').addEventListener('submit', (e) => {
      e.preventDefault();
      void this.send();
    });
    const input = $<HTMLTextAreaElement>('message-input');
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        void this.send();
      }
    });
    input.addEventListener('input', () => this.onTyping());
    input.addEventListener('blur', () => {
      if (this.typing.stop()) void this.emit('typing:stop');
    });
    $('call-audio').addEventListener('click', () => void this.startCall(false));
    $('call-video').addEventListener('click', () => void this.startCall(true));
    $('call-accept').addEventListener('click', () => void this.accept());
    $('call-reject').addEventListener('click', () => void this.reject());
    $('call-hangup').addEventListener('click', () => void this.hangup());
    $('call-mute').addEventListener('click', () => this.toggleMute());
    $('call-camera').addEventListener('click', () => this.toggleCamera());
    $('retry').addEventListener('click', () => this.retryNow());
    this.bindFiles();
  }
}

new App().start();
