// Every refusal a person may meet, in words for that person.

import { humanSize, spokenDuration } from './files';

const MESSAGES: Record<string, string> = {
  unauthorized: 'Your session has expired. Getting you a new one…',
  rate_limited: 'Slow down a little: too many actions at once. Try again in a moment.',
  server_busy: 'tandem is very busy right now. Please try again in a moment.',
  origin_not_allowed: 'This page is not allowed to connect to this tandem server.',
  invalid_username: 'A nickname is 1–24 letters, digits, spaces, “_” or “-”.',
  invalid_body: 'The request was not understood. Reload the page and try again.',
  invalid_payload: 'The request was not understood. Reload the page and try again.',
  invalid_interests: 'Up to 5 interests, each at most 24 characters.',
  already_searching: 'You are already looking for someone.',
  already_in_chat: 'You are already in a chat.',
  not_searching: 'You are not searching right now.',
  not_in_chat: 'You are not in a chat right now.',
  invalid_message: 'That message cannot be sent: 1–2000 characters, no control characters.',
  partner_away_queue_full:
    'The stranger is away and has too many unread messages. Wait until they are back.',
  unknown_message: 'That message is no longer in this chat.',
  invalid_report: 'The report reason is too long (at most 200 characters).',
  unknown_event: 'This page is out of date. Please reload it.',
  no_call: 'There is no call to answer right now.',
  call_in_progress: 'A call is already in progress.',
  invalid_sdp: 'The call could not be set up with this browser.',
  invalid_candidate: 'The call could not be set up with this browser.',
  invalid_upload: 'That file could not be sent (the upload was not understood). Try again.',
  empty_file: 'That file is empty.',
  file_too_large: 'That file is too large: files are at most 10 MB.',
  unsupported_type:
    'That type of file cannot be shared. Images (PNG, JPEG, GIF, WebP), PDF, text, audio and MP4/WebM video can.',
  voice_too_long: 'Voice notes are at most 5 minutes long.',
  storage_full: 'The server has no room for more files right now. Try again later.',
  upload_failed: 'The file could not be sent. Try again.',
  no_recorder: 'This browser cannot record voice notes.',
  not_found: 'Not found.',
  network: 'Cannot reach the tandem server. Check your connection.',
  timeout: 'The server did not answer in time. Try again.',
};

export function describeError(code: string, fallback?: string): string {
  return MESSAGES[code] ?? fallback ?? 'Something went wrong. Please try again.';
}

/** A refused upload in words for a person (`retryAfter`: seconds from a 429's `Retry-After`). */
export function describeUploadError(
  code: string,
  retryAfter: number | null = null,
  limits?: { maxFileBytes: number; maxVoiceMs: number },
): string {
  if (limits && code === 'file_too_large') {
    return `That file is too large: files are at most ${humanSize(limits.maxFileBytes)}.`;
  }
  if (limits && code === 'voice_too_long') {
    return `Voice notes are at most ${spokenDuration(limits.maxVoiceMs)} long.`;
  }
  if (code === 'rate_limited') {
    return retryAfter !== null && retryAfter > 0
      ? `You are sending files too quickly. Try again in ${retryAfter} s.`
      : 'You are sending files too quickly. Try again in a minute.';
  }
  if (code === 'unauthorized') return 'Your session had to be renewed. Please send the file again.';
  return describeError(code);
}

/** Camera / microphone errors from getUserMedia, in words for a person. */
export function describeMediaError(err: unknown, purpose: 'call' | 'voice' = 'call'): string {
  const name = typeof err === 'object' && err !== null && 'name' in err ? String(err.name) : '';
  switch (name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return purpose === 'voice'
        ? 'Microphone access was denied. Allow it in the browser to record voice notes.'
        : 'Camera or microphone access was denied. Allow it in the browser to make calls.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return purpose === 'voice' ? 'No microphone was found on this device.' : 'No camera or microphone was found on this device.';
    case 'NotReadableError':
      return purpose === 'voice'
        ? 'The microphone is in use by another application.'
        : 'The camera or microphone is in use by another application.';
    default:
      return typeof navigator !== 'undefined' && !navigator.mediaDevices
        ? purpose === 'voice'
          ? 'Voice notes need a secure (https) page.'
          : 'Calls need a secure (https) page.'
        : purpose === 'voice'
          ? 'The microphone could not be started.'
          : 'The camera or microphone could not be started.';
  }
}
