// Sending files: `POST /api/files` (multipart, with progress, cancellable) and recording voice
// notes (getUserMedia + MediaRecorder). The wire contract is docs/protocol.md, "Files".

import {
  baseMime,
  clampVoiceMs,
  parseUploadAnswer,
  pickRecorderType,
  retryAfterSecs,
  uploadErrorCode,
  type FileObject,
} from './files';

export interface UploadRequest {
  token: string;
  blob: Blob;
  name: string;
  kind: 'file' | 'voice';
  /** Voice notes only. */
  durationMs?: number;
  clientId: string;
  /** 0…1 as the body goes out. */
  onProgress(fraction: number): void;
}

export type UploadResult =
  | { ok: true; file: FileObject; messageId: string; timestamp: number }
  | { ok: false; code: string; retryAfter: number | null; aborted: boolean };

/** Starts an upload; `abort()` cancels it (the result is then `aborted`). */
export function upload(req: UploadRequest): { result: Promise<UploadResult>; abort(): void } {
  const xhr = new XMLHttpRequest();
  let aborted = false;
  const result = new Promise<UploadResult>((resolve) => {
    const fail = (code: string, retryAfter: number | null = null): void =>
      resolve({ ok: false, code, retryAfter, aborted });
    xhr.open('POST', '/api/files');
    xhr.setRequestHeader('Authorization', `Bearer ${req.token}`);
    xhr.upload.addEventListener('progress', (e) => {
      if (e.lengthComputable && e.total > 0) req.onProgress(e.loaded / e.total);
    });
    xhr.addEventListener('load', () => {
      if (xhr.status === 201) {
        let body: unknown = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          // handled below
        }
        const answer = parseUploadAnswer(body);
        if (answer) resolve({ ok: true, ...answer });
        else fail('upload_failed');
        return;
      }
      fail(uploadErrorCode(xhr.status, xhr.responseText), retryAfterSecs(xhr.getResponseHeader('Retry-After')));
    });
    // A server that refuses early (413 before the body is read) may close the connection while
    // the browser still sends: that is an `error` without a status.
    xhr.addEventListener('error', () => fail(xhr.status ? uploadErrorCode(xhr.status, xhr.responseText) : 'network'));
    xhr.addEventListener('abort', () => fail('aborted'));
    const form = new FormData();
    // The small fields first, the file last.
    form.append('kind', req.kind);
    if (req.kind === 'voice' && req.durationMs !== undefined) form.append('durationMs', String(Math.round(req.durationMs)));
    form.append('clientId', req.clientId);
    form.append('file', req.blob, req.name);
    xhr.send(form);
  });
  return {
    result,
    abort() {
      aborted = true;
      xhr.abort();
    },
  };
}

/** One voice note being recorded. */
export class VoiceRecorder {
  private stream: MediaStream | null = null;
  private rec: MediaRecorder | null = null;
  private readonly chunks: Blob[] = [];
  private startedAt = 0;
  private cancelled = false;

  /** `maxMs`: the server's voice-note limit; a longer recording is sent as that long. */
  constructor(private readonly maxMs: number) {}

  static supported(): boolean {
    return typeof MediaRecorder !== 'undefined' && !!navigator.mediaDevices?.getUserMedia;
  }

  /** Asks for the microphone and starts recording. Throws getUserMedia's error. */
  async start(): Promise<void> {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      video: false,
    });
    if (this.cancelled) {
      for (const t of stream.getTracks()) t.stop();
      return;
    }
    this.stream = stream;
    const mimeType = pickRecorderType((t) => MediaRecorder.isTypeSupported(t));
    const rec = new MediaRecorder(stream, mimeType ? { mimeType, audioBitsPerSecond: 32_000 } : undefined);
    rec.addEventListener('dataavailable', (e) => {
      if (e.data.size > 0) this.chunks.push(e.data);
    });
    this.rec = rec;
    rec.start(1000);
    this.startedAt = performance.now();
  }

  /** Milliseconds recorded so far. */
  elapsed(): number {
    return this.startedAt ? performance.now() - this.startedAt : 0;
  }

  /** Stops; the recording (null when there is none). */
  stop(): Promise<{ blob: Blob; mime: string; durationMs: number } | null> {
    const rec = this.rec;
    if (!rec || rec.state === 'inactive') {
      this.release();
      return Promise.resolve(null);
    }
    const durationMs = clampVoiceMs(this.elapsed(), this.maxMs);
    return new Promise((resolve) => {
      rec.addEventListener(
        'stop',
        () => {
          this.release();
          const mime = baseMime(rec.mimeType || this.chunks[0]?.type || 'audio/webm');
          const blob = new Blob(this.chunks, { type: mime });
          resolve(blob.size > 0 ? { blob, mime, durationMs } : null);
        },
        { once: true },
      );
      rec.stop();
    });
  }

  /** Stops and throws the recording away (also while the microphone is still being asked for). */
  cancel(): void {
    this.cancelled = true;
    if (this.rec && this.rec.state !== 'inactive') this.rec.stop();
    this.chunks.length = 0;
    this.release();
  }

  private release(): void {
    for (const t of this.stream?.getTracks() ?? []) t.stop();
    this.stream = null;
  }
}
