// End to end, as a client that knows only the OpenWork handshake and opencode's published SDK:
// the generated client finds the active workspace's opencode base URL, opencode's SDK creates
// and lists a session through it, and the typed event reader sees the stream open (and, resuming
// with an id of another server process, a `lagged` frame and a fresh snapshot).
//
//   OPENWORK_URL=http://127.0.0.1:PORT OPENWORK_TOKEN=... node test/e2e.mjs
//
// Prints one JSON line of what it saw; exits non-zero on any failure. Run after `npm run
// build` (it uses the built client, as a package user would).
import { createOpencodeClient } from '@opencode-ai/sdk';
import { createClient, createConfig } from '../dist/generated/client/index.js';
import { capabilities, health, workspaces } from '../dist/index.js';
import { followSystemEvents } from '../dist/index.js';

const url = process.env.OPENWORK_URL;
const token = process.env.OPENWORK_TOKEN;
if (!url || !token) throw new Error('set OPENWORK_URL and OPENWORK_TOKEN');

function must(result, what) {
  if (result.error !== undefined || result.data === undefined) {
    throw new Error(`${what}: ${result.response?.status} ${JSON.stringify(result.error)}`);
  }
  return result.data;
}

const client = createClient(createConfig({ baseUrl: url, headers: { authorization: `Bearer ${token}` } }));

const hello = must(await health({ client }), 'GET /health');
if (hello.healthy !== true) throw new Error(`not healthy: ${JSON.stringify(hello)}`);
const listing = must(await workspaces({ client }), 'GET /workspaces');
const { baseUrl, directory } = listing.active.opencode;
const caps = must(await capabilities({ client }), 'GET /capabilities');

// A wrong token is a typed error, not an exception.
const refused = await workspaces({ client: createClient(createConfig({ baseUrl: url, headers: { authorization: 'Bearer wrong-token-0123456789' } })) });
if (refused.response.status !== 401 || refused.error?.error !== 'unauthorized') {
  throw new Error(`a wrong token: ${refused.response.status} ${JSON.stringify(refused.error)}`);
}

const opencode = createOpencodeClient({ baseUrl, headers: { authorization: `Bearer ${token}` } });
const title = `e2e ${Date.now()}`;
const created = await opencode.session.create({ body: { title } });
if (created.error || !created.data) throw new Error(`session.create: ${JSON.stringify(created.error)}`);
const listed = await opencode.session.list();
if (listed.error || !listed.data) throw new Error(`session.list: ${JSON.stringify(listed.error)}`);
const found = listed.data.find((s) => s.id === created.data.id);
if (!found) throw new Error(`the new session ${created.data.id} is not listed`);

const abort = new AbortController();
let first;
for await (const frame of followSystemEvents({ baseUrl: url, token, signal: abort.signal })) {
  first = frame;
  break;
}
abort.abort();

// An id from another server process (another epoch): told so, then a fresh snapshot.
const resumed = [];
const again = new AbortController();
for await (const frame of followSystemEvents({ baseUrl: url, token, lastEventId: 'ffffffffffffffff-7', signal: again.signal })) {
  resumed.push(frame.event === 'lagged' ? { event: frame.event, ...frame.data } : { event: frame.event, id: frame.id });
  if (resumed.length === 2) break;
}
again.abort();

// A connection that drops right after the snapshot: with `reconnect`, the reader asks again
// (after the stream's `retry:`), resuming after the snapshot's id.
const asked = [];
const dropping = new AbortController();
const cutAfterFirstFrame = async (input, init) => {
  asked.push(init.headers['last-event-id'] ?? null);
  const response = await fetch(input, init);
  if (asked.length > 1) {
    dropping.abort();
    return response;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = '';
  while (!text.includes('event: snapshot') || !text.endsWith('\n\n')) {
    const { value, done } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
  }
  await reader.cancel();
  return new Response(text, { status: response.status, headers: response.headers });
};
let snapshotId;
try {
  for await (const frame of followSystemEvents({ baseUrl: url, token, reconnect: true, fetch: cutAfterFirstFrame, signal: dropping.signal })) {
    if (frame.event === 'snapshot') snapshotId = frame.id;
  }
} catch (error) {
  if (!dropping.signal.aborted) throw error;
}

console.log(
  JSON.stringify({
    baseUrl,
    directory,
    skills: caps.skills,
    sessionId: created.data.id,
    sessionTitle: found.title,
    sessionDirectory: created.data.directory,
    firstEvent: first?.event,
    firstEventId: first?.id,
    firstEventIdIsEpochAndSeq: first?.event === 'snapshot' && first.id === `${first.data.epoch}-${first.data.seq}`,
    resumed,
    reconnectedWith: asked,
    snapshotId,
    sidecars: first?.event === 'snapshot' ? first.data.sidecars.map((s) => s.name) : [],
  }),
);
