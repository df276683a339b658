// A typed reader of `GET /system/events` (Server-Sent Events). The generated `systemEvents`
// yields each frame's data as the union of every kind; this pairs the frame's `event:` name
// with its data, so `switch (frame.event)` narrows the data to that kind (`snapshot`,
// `lagged`, or a numbered supervisor event) — types from the same contract
// (docs/openapi.json → ./generated) as the rest of the client.
//
// Ids are `<epoch>-<seq>`: the epoch is drawn anew by every server process. Resuming with
// the last id seen replays exactly the missed events when the server still remembers them,
// and otherwise sends a `lagged` frame (why, and how many were missed when known) and a fresh
// snapshot: a reader never loses events without being told. The server's last event,
// `stopped` of sidecar `server`, says the stream ended because the server stopped on purpose.
import type { Event, Lagged, Snapshot } from './generated/types.gen.js';

/** One frame of the stream, discriminated by its `event:` name. */
export type SystemEventFrame =
  | { event: 'snapshot'; id: string; data: Snapshot }
  | { event: 'lagged'; id?: undefined; data: Lagged }
  | { event: Event['event']; id: string; data: Event };

export interface FollowSystemEventsOptions {
  /** The server's URL, e.g. `http://127.0.0.1:43117` (the ready line's `url`). */
  baseUrl: string;
  /** The client or host token. */
  token: string;
  /** Resume after this id (a frame's `id`) instead of starting with a snapshot. */
  lastEventId?: string;
  /**
   * Reconnect when the stream breaks (a dropped connection, a server that is gone for a
   * while), resuming after the last id seen, until the server's last event or `signal`.
   * Without it the generator returns when the stream ends and throws what fetch throws.
   */
  reconnect?: boolean;
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

/** Whether `frame` is the server's last event: it stopped on purpose, and the stream ends. */
export function isLastEvent(frame: SystemEventFrame): boolean {
  return frame.event === 'stopped' && 'sidecar' in frame.data && frame.data.sidecar === 'server';
}

/** How long to wait before reconnecting when the server has not said (its `retry:`). */
const DEFAULT_RETRY_MS = 2000;

/**
 * Yields the frames of `GET /system/events` as they arrive, until the server ends the stream
 * (after its last event, see `isLastEvent`) or `signal` aborts. Comments (`: keepalive`) and
 * `retry:` are skipped. With `reconnect`, a broken stream is resumed from the last id seen.
 */
export async function* followSystemEvents(options: FollowSystemEventsOptions): AsyncGenerator<SystemEventFrame> {
  let lastEventId = options.lastEventId;
  const retry = { ms: DEFAULT_RETRY_MS };
  for (;;) {
    let ended = false;
    try {
      for await (const frame of readStream(options, lastEventId, retry)) {
        if (frame.id) lastEventId = frame.id;
        yield frame;
        if (isLastEvent(frame)) ended = true;
      }
      if (ended || !options.reconnect) return;
    } catch (error) {
      // A refusal (a revoked token, say) does not get better by asking again.
      if (!options.reconnect || options.signal?.aborted || error instanceof SystemEventStreamError) throw error;
    }
    if (options.signal?.aborted) return;
    await sleep(retry.ms, options.signal);
  }
}

/** One connection's frames; `retry.ms` is set from the stream's `retry:` field. */
async function* readStream(
  options: FollowSystemEventsOptions,
  lastEventId: string | undefined,
  retry: { ms: number },
): AsyncGenerator<SystemEventFrame> {
  const headers: Record<string, string> = {
    authorization: `Bearer ${options.token}`,
    accept: 'text/event-stream',
  };
  if (lastEventId !== undefined) headers['last-event-id'] = lastEventId;
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
        const text = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const retryMs = parseRetry(text);
        if (retryMs !== undefined) retry.ms = retryMs;
        const frame = parseFrame(text);
        if (frame !== undefined) yield frame;
      }
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
}

/** The `retry:` of a frame, in ms, if it has a valid one. */
function parseRetry(text: string): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('retry:')) {
      const ms = Number(line.slice('retry:'.length).trim());
      if (Number.isInteger(ms) && ms >= 0) return ms;
    }
  }
  return undefined;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
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
  if (event === 'snapshot') {
    const snapshot = parsed as Snapshot;
    return { event, id: id ?? `${snapshot.epoch}-${snapshot.seq}`, data: snapshot };
  }
  if (event === 'lagged') return { event, data: parsed as Lagged };
  const numbered = parsed as Event;
  // Every numbered frame has an id; without one (never sent so), the frame is not resumable.
  return { event: numbered.event, id: id ?? '', data: numbered };
}
