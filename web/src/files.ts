// Files and voice notes in a chat: the file object tandem sends (docs/protocol.md, "Files"), how
// it is shown (sizes, durations, expiry) and how an upload's answer is read. Pure logic, no DOM.

export type Category = 'image' | 'video' | 'audio' | 'document';
export type FileType = 'file' | 'voice';

/** tandem's file object (the `content` of a `file` / `voice` chat message). */
export interface FileObject {
  fileId: string;
  /** The sanitized name (shown, and used when saving). */
  name: string;
  size: number;
  mimeType: string;
  category: Category;
  /** Relative to the server: `/api/files/<fileId>?room=…&exp=…&sig=…`. */
  url: string;
  /** RFC 3339. */
  expiresAt: string;
  /** Voice notes only. */
  durationMs?: number;
}

/** The server's `--max-file-size` default (10 MiB); the server is the authority. */
export const MAX_FILE_BYTES = 10 * 1024 * 1024;
/** The longest voice note (`--max-voice-secs`, default 300 s). */
export const MAX_VOICE_MS = 300_000;

/** This server's limits (`GET /api/limits`); the defaults until it has answered. */
export interface FileLimits {
  maxFileBytes: number;
  maxVoiceMs: number;
}

export const DEFAULT_LIMITS: FileLimits = { maxFileBytes: MAX_FILE_BYTES, maxVoiceMs: MAX_VOICE_MS };

/** Reads a `GET /api/limits` answer; a missing or nonsensical value keeps its default. */
export function parseLimits(v: unknown): FileLimits {
  const o = typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : {};
  const positive = (x: unknown, dflt: number): number =>
    typeof x === 'number' && Number.isSafeInteger(x) && x > 0 ? x : dflt;
  return {
    maxFileBytes: positive(o.maxFileSize, MAX_FILE_BYTES),
    maxVoiceMs: positive(o.maxVoiceMs, MAX_VOICE_MS),
  };
}

const CATEGORIES = new Set<Category>(['image', 'video', 'audio', 'document']);
/** Images the page shows inline (the server sniffs these). */
const INLINE_IMAGES = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp']);
/**
 * The file URL must be one of tandem's file routes: the page sends its token with it, so it may
 * never point anywhere else (no other host, no other route, no `..`).
 */
const FILE_URL = /^\/api\/files\/[A-Za-z0-9_-]{1,128}(\?[A-Za-z0-9_.~%=&+-]*)?$/;

const str = (v: unknown): v is string => typeof v === 'string';

/** Reads a file object (an incoming message's content, a stored message, an upload answer). */
export function parseFileObject(v: unknown): FileObject | null {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  if (!str(o.fileId) || o.fileId === '' || o.fileId.length > 128) return null;
  if (!str(o.name) || !str(o.mimeType) || !str(o.url) || !str(o.expiresAt)) return null;
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) return null;
  if (!FILE_URL.test(o.url)) return null;
  if (Number.isNaN(Date.parse(o.expiresAt))) return null;
  const category: Category = str(o.category) && CATEGORIES.has(o.category as Category) ? (o.category as Category) : 'document';
  const out: FileObject = {
    fileId: o.fileId,
    name: o.name.trim() === '' ? 'file' : o.name.slice(0, 255),
    size: o.size,
    mimeType: o.mimeType.slice(0, 255),
    category,
    url: o.url,
    expiresAt: o.expiresAt,
  };
  if (typeof o.durationMs === 'number' && Number.isFinite(o.durationMs) && o.durationMs >= 0) {
    out.durationMs = Math.round(o.durationMs);
  }
  return out;
}

/** The 201 answer of `POST /api/files`: the file object plus the message's id and time. */
export function parseUploadAnswer(v: unknown): { file: FileObject; messageId: string; timestamp: number } | null {
  const file = parseFileObject(v);
  if (!file) return null;
  const o = v as Record<string, unknown>;
  if (!str(o.messageId) || o.messageId === '') return null;
  const timestamp = typeof o.timestamp === 'number' && Number.isFinite(o.timestamp) ? o.timestamp : Date.now();
  return { file, messageId: o.messageId, timestamp };
}

/** The message type of a `chat:message` that carries a file, or null (text, system, unknown). */
export function fileType(v: unknown): FileType | null {
  return v === 'file' || v === 'voice' ? v : null;
}

/** Whether the file is past its expiry at `now` (ms). */
export function isExpired(file: Pick<FileObject, 'expiresAt'>, now: number): boolean {
  const t = Date.parse(file.expiresAt);
  return !Number.isNaN(t) && t <= now;
}

/** How a failed download answers: 404 (gone: chat ended, swept) and 410 (expired) are "expired". */
export function downloadFailure(status: number): 'expired' | 'error' {
  return status === 404 || status === 410 ? 'expired' : 'error';
}

/** How a file message is shown. */
export function attachmentKind(type: FileType, file: Pick<FileObject, 'category' | 'mimeType'>): 'voice' | 'image' | 'card' {
  if (type === 'voice') return 'voice';
  if (file.category === 'image' && INLINE_IMAGES.has(baseMime(file.mimeType))) return 'image';
  return 'card';
}

/** `1.5 KB`, `10 MB` (1024-based, one decimal below 10). */
export function humanSize(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return '';
  if (bytes < 1024) return `${Math.round(bytes)} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = bytes / 1024;
  let u = 0;
  for (;;) {
    const shown = v < 10 ? Math.round(v * 10) / 10 : Math.round(v);
    if (shown >= 1024 && u < units.length - 1) {
      v /= 1024;
      u += 1;
      continue;
    }
    return `${v < 10 ? shown.toFixed(1) : String(shown)} ${units[u]}`;
  }
}

/**
 * `m:ss` (`h:mm:ss` from an hour). `floor` for a running clock (a recording's elapsed time);
 * otherwise rounded, and anything above zero shows at least `0:01`.
 */
export function formatDuration(ms: number, mode: 'round' | 'floor' = 'round'): string {
  if (!Number.isFinite(ms) || ms < 0) return '';
  let s = mode === 'floor' ? Math.floor(ms / 1000) : Math.round(ms / 1000);
  if (mode === 'round' && s === 0 && ms > 0) s = 1;
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}

/** A duration for a screen reader: "1 minute 5 seconds". */
export function spokenDuration(ms: number): string {
  const s = Math.max(ms > 0 ? 1 : 0, Math.round(ms / 1000));
  const m = Math.floor(s / 60);
  const parts: string[] = [];
  if (m > 0) parts.push(`${m} minute${m === 1 ? '' : 's'}`);
  if (s % 60 > 0 || m === 0) parts.push(`${s % 60} second${s % 60 === 1 ? '' : 's'}`);
  return parts.join(' ');
}

/** `audio/webm;codecs=opus` → `audio/webm` (lowercase, no parameters). */
export function baseMime(t: string): string {
  return t.split(';')[0].trim().toLowerCase();
}

/** A short human type for a download card: "PDF", "PNG image", "Text", "Video"… */
export function typeLabel(file: Pick<FileObject, 'mimeType' | 'category'>): string {
  const m = baseMime(file.mimeType);
  if (m === 'application/pdf') return 'PDF';
  if (m === 'text/plain') return 'Text';
  const sub = (m.split('/')[1] ?? '').replace(/^x-/, '').toUpperCase();
  switch (file.category) {
    case 'image':
      return sub ? `${sub} image` : 'Image';
    case 'video':
      return sub ? `${sub} video` : 'Video';
    case 'audio':
      return sub ? `${sub} audio` : 'Audio';
    default:
      return sub || 'File';
  }
}

/** What to refuse before uploading at all (the server checks again): an error code or null. */
export function checkBeforeUpload(size: number, maxBytes = MAX_FILE_BYTES): string | null {
  if (size <= 0) return 'empty_file';
  if (size > maxBytes) return 'file_too_large';
  return null;
}

/** The error code of a failed upload: the body's `error.code`, else one from the status. */
export function uploadErrorCode(status: number, body: string): string {
  try {
    const v: unknown = JSON.parse(body);
    const e = (v as { error?: { code?: unknown } } | null)?.error;
    if (e && typeof e.code === 'string' && e.code !== '') return e.code;
  } catch {
    // not JSON: fall back on the status
  }
  const byStatus: Record<number, string> = {
    0: 'network',
    400: 'invalid_upload',
    401: 'unauthorized',
    409: 'not_in_chat',
    413: 'file_too_large',
    415: 'unsupported_type',
    429: 'rate_limited',
    503: 'server_busy',
    507: 'storage_full',
  };
  return byStatus[status] ?? 'upload_failed';
}

/** Seconds of a `Retry-After` header (delta-seconds form), or null. */
export function retryAfterSecs(header: string | null): number | null {
  if (header === null || !/^\s*\d{1,6}\s*$/.test(header)) return null;
  return Number(header.trim());
}

/** MediaRecorder types to try for voice notes, best first (Opus; Safari records MP4/AAC). */
const RECORDER_TYPES = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/webm', 'audio/ogg', 'audio/mp4'];

/** The type to record voice notes in, or '' to let the browser pick. */
export function pickRecorderType(isTypeSupported: (t: string) => boolean): string {
  for (const t of RECORDER_TYPES) {
    try {
      if (isTypeSupported(t)) return t;
    } catch {
      // a browser that throws on a type simply does not support it
    }
  }
  return '';
}

/** The file name a voice note is uploaded under (its extension matches the recorded type). */
export function voiceFileName(mime: string): string {
  const ext: Record<string, string> = { 'audio/webm': 'webm', 'audio/ogg': 'ogg', 'audio/mp4': 'm4a', 'audio/mpeg': 'mp3', 'audio/wav': 'wav' };
  const e = ext[baseMime(mime)];
  return e ? `voice-note.${e}` : 'voice-note';
}

/** A recording's length as sent in `durationMs`: 1 … `max` (the server's voice-note limit). */
export function clampVoiceMs(ms: number, max = MAX_VOICE_MS): number {
  if (!Number.isFinite(ms)) return 1;
  return Math.min(max, Math.max(1, Math.round(ms)));
}
