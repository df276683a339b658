// A typed reader of `GET /system/events` (Server-Sent Events). The generated `systemEvents`
// yields each frame's data as the union of every kind; this pairs the frame's `event:` name
// with its data, so `switch (frame.event)` narrows the data to that kind (`snapshot`,
// `lagged`, or a numbered supervisor event) — types from the same contract
// (docs/openapi.json → ./generated) as the rest of the client.
import type { Event, Lagged, Snapshot } from './generated/types.gen.js';

/** One frame of the stream, discriminated by its `event:` name. */
export type SystemEventFrame =
  | { event: 'snapshot'; id?: undefined; data: Snapshot }
  | { event: 'lagged'; id?: undefined; data: Lagged }
  | { event: Event['event']; id: string; data: Event };

export interface FollowSystemEventsOptions {
  /** The server's URL, e.g. `http://127.0.0.1:43117` (the ready line's `url`). */
  baseUrl: string;
  /** The client or host token. */
  token: string;
  /** Replay the remembered events after this id instead of starting with a snapshot. */
  lastEventId?: string;
  /** Ends the stream. */
  signal?: AbortSignal;
  /** A fetch to use instead of the global one. */
  fetch?: typeof fetch;
}

/** Thrown when the server refuses the stream (401 and the like), with its JSON error. */
export class SystemEventStreamError extends Error {
  constructor(
    readonly status: number,
    readonly body: unknown,
  ) {
    super(`GET /system/events: ${status} ${JSON.stringify(body)}`);
  }
}

/**
 * Yields the frames of `GET /system/events` as they arrive, until the server ends the stream
 * or `signal` aborts. Comments (`: keepalive`) and `retry:` are skipped.
 */
export async function* followSystemEvents(options: FollowSystemEventsOptions): AsyncGenerator<SystemEventFrame> {
  const headers: Record<string, string> = {
    authorization: `Bearer ${options.token}`,
    accept: 'text/event-stream',
  };
  if (options.lastEventId !== undefined) headers['last-event-id'] = options.lastEventId;
  const response = await (options.fetch ?? fetch)(new URL('/system/events', options.baseUrl), {
    headers,
    signal: options.signal,
  });
  if (!response.ok || response.body === null) {
    const body = await response.json().catch(() => null);
    throw new SystemEventStreamError(response.status, body);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end: number;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const frame = parseFrame(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (frame !== undefined) yield frame;
      }
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
}

/** One frame's lines → a typed frame; undefined for a frame without data (comments, retry). */
export function parseFrame(text: string): SystemEventFrame | undefined {
  let event = 'message';
  let id: string | undefined;
  const data: string[] = [];
  for (const line of text.split('\n')) {
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') event = value;
    else if (field === 'id') id = value;
    else if (field === 'data') data.push(value);
  }
  if (data.length === 0) return undefined;
  const parsed: unknown = JSON.parse(data.join('\n'));
  if (event === 'snapshot') return { event, data: parsed as Snapshot };
  if (event === 'lagged') return { event, data: parsed as Lagged };
  const numbered = parsed as Event;
  return { event: numbered.event, id: id ?? String(numbered.seq), data: numbered };
}
