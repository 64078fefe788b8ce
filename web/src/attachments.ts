// How file messages look on the page: image thumbnails, download cards and voice-note players.
// A file is fetched with the guest's token (never by a plain <img src>: the route needs the
// Authorization header) and shown through a blob: URL. One element per file, kept across
// re-renders of the message list (so a playing voice note keeps playing when a message arrives);
// its blob: URL is revoked when the message leaves the list or the chat ends.

import {
  attachmentKind,
  downloadFailure,
  formatDuration,
  humanSize,
  isExpired,
  spokenDuration,
  typeLabel,
  type FileObject,
  type FileType,
} from './files';

export interface AttachmentHost {
  /** The guest's current token (null: none). */
  token(): string | null;
  /** An element changed size (an image loaded): keep the list scrolled to the bottom if it was. */
  resized(): void;
  /** A message for a person (a failed download). */
  error(text: string): void;
}

type State = 'loading' | 'ready' | 'expired' | 'error';

interface Entry {
  type: FileType;
  file: FileObject;
  kind: 'voice' | 'image' | 'card';
  el: HTMLElement;
  state: State;
  /** The preview / player's blob: URL. */
  blobUrl: string | null;
  /** blob: URLs of saved downloads not yet revoked. */
  downloads: Set<string>;
  abort: AbortController | null;
}

/** At most this many file fetches at once (a restored chat may hold many images). */
const PARALLEL = 3;
/** How long a download's blob: URL lives after the save started. */
const DOWNLOAD_URL_MS = 60_000;

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls?: string, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** A simple document icon (inline SVG: no image request, follows the text colour). */
function docIcon(): SVGSVGElement {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('width', '28');
  svg.setAttribute('height', '28');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', 'file-icon');
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', 'M6 2h8l6 6v14H6zM14 2v6h6M9 13h8M9 17h8');
  path.setAttribute('fill', 'none');
  path.setAttribute('stroke', 'currentColor');
  path.setAttribute('stroke-width', '1.6');
  path.setAttribute('stroke-linejoin', 'round');
  svg.append(path);
  return svg;
}

export class Attachments {
  private readonly entries = new Map<string, Entry>();
  private expiryTimer: number | undefined;
  private running = 0;
  private readonly waiting: Array<() => void> = [];
  private readonly viewer: HTMLDialogElement | null;

  constructor(private readonly host: AttachmentHost) {
    const v = document.getElementById('viewer');
    this.viewer = v instanceof HTMLDialogElement ? v : null;
    document.getElementById('viewer-close')?.addEventListener('click', () => this.closeViewer());
    this.viewer?.addEventListener('close', () => this.cleanViewer());
    this.viewer?.addEventListener('click', (e) => {
      // A click on the backdrop (the dialog itself, not its content) closes it.
      if (e.target === this.viewer) this.closeViewer();
    });
  }

  /** The element showing `file` (created, and its fetch started, on first use). */
  element(type: FileType, file: FileObject): HTMLElement {
    const have = this.entries.get(file.fileId);
    if (have) return have.el;
    const kind = attachmentKind(type, file);
    const e: Entry = {
      type,
      file,
      kind,
      el: el('div', `file file-${kind}`),
      state: 'loading',
      blobUrl: null,
      downloads: new Set(),
      abort: null,
    };
    this.entries.set(file.fileId, e);
    if (isExpired(file, Date.now())) {
      this.show(e, 'expired');
    } else if (kind === 'card') {
      // Downloads are fetched on demand.
      this.show(e, 'ready');
    } else {
      this.show(e, 'loading');
      void this.load(e);
    }
    this.scheduleExpiry();
    return e.el;
  }

  /**
   * An own upload the server accepted: show it from the bytes this page already holds instead of
   * downloading them again (a reload fetches it like any other).
   */
  adopt(type: FileType, file: FileObject, blob: Blob): void {
    if (this.entries.has(file.fileId) || isExpired(file, Date.now())) return;
    const kind = attachmentKind(type, file);
    if (kind === 'card') return;
    const e: Entry = {
      type,
      file,
      kind,
      el: el('div', `file file-${kind}`),
      state: 'ready',
      blobUrl: URL.createObjectURL(blob),
      downloads: new Set(),
      abort: null,
    };
    this.entries.set(file.fileId, e);
    this.show(e, 'ready');
    this.scheduleExpiry();
  }

  /** Forgets (and revokes the URLs of) every file not in `keep`. */
  retain(keep: Set<string>): void {
    for (const [id, e] of this.entries) {
      if (!keep.has(id)) {
        this.release(e);
        this.entries.delete(id);
      }
    }
    this.scheduleExpiry();
  }

  clear(): void {
    this.retain(new Set());
  }

  private release(e: Entry): void {
    e.abort?.abort();
    e.abort = null;
    if (e.blobUrl) {
      if (this.viewer?.open && this.viewer.dataset.src === e.blobUrl) this.closeViewer();
      URL.revokeObjectURL(e.blobUrl);
      e.blobUrl = null;
    }
    for (const u of e.downloads) URL.revokeObjectURL(u);
    e.downloads.clear();
    const audio = e.el.querySelector('audio');
    if (audio) {
      audio.pause();
      audio.removeAttribute('src');
    }
  }

  // ------------------------------------------------------------------------------------ fetching

  private async slot(): Promise<void> {
    if (this.running < PARALLEL) {
      this.running += 1;
      return;
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  private done(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.running -= 1;
  }

  /** Fetches the file with the token: its blob, or the state to show instead. */
  private async fetchFile(e: Entry, signal: AbortSignal): Promise<Blob | 'expired' | 'error' | 'aborted'> {
    const token = this.host.token();
    if (!token) return 'error';
    if (isExpired(e.file, Date.now())) return 'expired';
    try {
      const res = await fetch(e.file.url, {
        headers: { Authorization: `Bearer ${token}` },
        cache: 'no-store',
        credentials: 'omit',
        signal,
      });
      if (!res.ok) return downloadFailure(res.status);
      return await res.blob();
    } catch {
      return signal.aborted ? 'aborted' : 'error';
    }
  }

  private async load(e: Entry): Promise<void> {
    const abort = new AbortController();
    e.abort = abort;
    await this.slot();
    try {
      if (abort.signal.aborted) return;
      const got = await this.fetchFile(e, abort.signal);
      if (abort.signal.aborted || got === 'aborted' || this.entries.get(e.file.fileId) !== e) return;
      e.abort = null;
      if (got === 'expired' || got === 'error') {
        this.show(e, got);
        return;
      }
      e.blobUrl = URL.createObjectURL(got);
      this.show(e, 'ready');
    } finally {
      this.done();
    }
  }

  private async download(e: Entry, button: HTMLButtonElement): Promise<void> {
    if (e.abort) return;
    const abort = new AbortController();
    e.abort = abort;
    button.disabled = true;
    button.textContent = 'Downloading…';
    await this.slot();
    let got: Blob | 'expired' | 'error' | 'aborted';
    try {
      got = await this.fetchFile(e, abort.signal);
    } finally {
      this.done();
    }
    if (abort.signal.aborted || got === 'aborted' || this.entries.get(e.file.fileId) !== e) return;
    e.abort = null;
    button.disabled = false;
    button.textContent = 'Download';
    if (got === 'expired') {
      this.show(e, 'expired');
      return;
    }
    if (got === 'error') {
      this.host.error(`“${e.file.name}” could not be downloaded. Try again.`);
      return;
    }
    const url = URL.createObjectURL(got);
    e.downloads.add(url);
    const a = el('a');
    a.href = url;
    a.download = e.file.name;
    a.rel = 'noopener';
    a.hidden = true;
    document.body.append(a);
    a.click();
    a.remove();
    window.setTimeout(() => {
      if (e.downloads.delete(url)) URL.revokeObjectURL(url);
    }, DOWNLOAD_URL_MS);
  }

  // ------------------------------------------------------------------------------------ expiry

  private scheduleExpiry(): void {
    window.clearTimeout(this.expiryTimer);
    let next = Infinity;
    for (const e of this.entries.values()) {
      if (e.state === 'expired') continue;
      const t = Date.parse(e.file.expiresAt);
      if (!Number.isNaN(t)) next = Math.min(next, t);
    }
    if (next === Infinity) return;
    const wait = Math.min(Math.max(next - Date.now(), 0) + 250, 2 ** 31 - 1);
    this.expiryTimer = window.setTimeout(() => {
      const now = Date.now();
      for (const e of this.entries.values()) {
        if (e.state !== 'expired' && isExpired(e.file, now)) {
          this.release(e);
          this.show(e, 'expired');
        }
      }
      this.scheduleExpiry();
    }, wait);
  }

  // ------------------------------------------------------------------------------------ drawing

  private show(e: Entry, state: State): void {
    if (state === 'expired') this.release(e);
    e.state = state;
    e.el.dataset.state = state;
    const f = e.file;
    const label = e.type === 'voice' ? 'Voice note' : f.name;
    const parts: Node[] = [];
    if (state === 'expired') {
      const gone = el('div', 'file-gone');
      gone.append(el('span', 'file-name', label), el('span', 'file-expired', 'expired'));
      gone.title = 'Shared files are deleted when they expire or the chat ends.';
      parts.push(gone);
    } else if (state === 'error') {
      const box = el('div', 'file-failed');
      const retry = el('button', 'file-retry', 'Retry');
      retry.type = 'button';
      retry.setAttribute('aria-label', `Load ${label} again`);
      retry.addEventListener('click', () => {
        this.show(e, 'loading');
        void this.load(e);
      });
      box.append(el('span', 'file-name', label), el('span', 'file-error', 'could not be loaded'), retry);
      parts.push(box);
    } else if (e.kind === 'card') {
      parts.push(this.card(e));
    } else if (e.kind === 'image') {
      parts.push(state === 'ready' && e.blobUrl ? this.thumb(e, e.blobUrl) : this.placeholder(`Loading ${f.name}…`));
    } else {
      parts.push(this.voice(e, state === 'ready' ? e.blobUrl : null));
    }
    e.el.replaceChildren(...parts);
    this.host.resized();
  }

  private placeholder(text: string): HTMLElement {
    const p = el('span', 'file-loading', text);
    p.setAttribute('role', 'status');
    return p;
  }

  private thumb(e: Entry, url: string): HTMLElement {
    const button = el('button', 'file-thumb');
    button.type = 'button';
    button.setAttribute('aria-label', `Open image ${e.file.name}`);
    const img = el('img', 'file-preview');
    img.alt = e.file.name;
    img.decoding = 'async';
    img.addEventListener('load', () => this.host.resized());
    img.src = url;
    button.append(img);
    button.addEventListener('click', () => this.openViewer(e));
    return button;
  }

  private card(e: Entry): HTMLElement {
    const f = e.file;
    const card = el('div', 'file-card');
    const info = el('span', 'file-info');
    const details = el('span', 'file-details');
    details.append(el('span', 'file-type', typeLabel(f)), el('span', 'file-size', humanSize(f.size)));
    info.append(el('span', 'file-name', f.name), details);
    const button = el('button', 'file-download', 'Download');
    button.type = 'button';
    button.setAttribute('aria-label', `Download ${f.name} (${humanSize(f.size)})`);
    button.addEventListener('click', () => void this.download(e, button));
    card.append(docIcon(), info, button);
    return card;
  }

  private voice(e: Entry, url: string | null): HTMLElement {
    const box = el('div', 'voice');
    const ms = e.file.durationMs;
    const dur = el('span', 'voice-duration', ms === undefined ? '' : formatDuration(ms));
    if (ms !== undefined) dur.setAttribute('aria-label', spokenDuration(ms));
    if (url) {
      const audio = el('audio', 'voice-player');
      audio.controls = true;
      audio.preload = 'metadata';
      audio.setAttribute('aria-label', ms === undefined ? 'Voice note' : `Voice note, ${spokenDuration(ms)}`);
      audio.src = url;
      box.append(audio, dur);
    } else {
      box.append(this.placeholder('Loading voice note…'), dur);
    }
    return box;
  }

  private openViewer(e: Entry): void {
    if (!e.blobUrl) return;
    const v = this.viewer;
    const img = document.getElementById('viewer-img');
    const save = document.getElementById('viewer-save');
    if (!v || typeof v.showModal !== 'function' || !(img instanceof HTMLImageElement)) {
      window.open(e.blobUrl, '_blank', 'noopener');
      return;
    }
    img.src = e.blobUrl;
    img.alt = e.file.name;
    v.dataset.src = e.blobUrl;
    document.getElementById('viewer-title')!.textContent = e.file.name;
    if (save instanceof HTMLAnchorElement) {
      save.href = e.blobUrl;
      save.download = e.file.name;
    }
    v.showModal();
  }

  private closeViewer(): void {
    if (this.viewer?.open) this.viewer.close();
    this.cleanViewer();
  }

  /** The viewer closed (button, Esc, backdrop): it keeps no reference to the blob. */
  private cleanViewer(): void {
    const v = this.viewer;
    if (!v) return;
    delete v.dataset.src;
    const img = document.getElementById('viewer-img');
    if (img instanceof HTMLImageElement) img.removeAttribute('src');
    const save = document.getElementById('viewer-save');
    if (save instanceof HTMLAnchorElement) save.removeAttribute('href');
  }
}
