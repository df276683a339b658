// opencode's own event stream and a terminal through the server, as opencode's clients open
// them: opencode's published SDK subscribes to opencode's SSE events through the server's
// /opencode proxy and creates a PTY there, then a WebSocket to its connect URL (upgraded
// through the same proxy, over TLS when the server speaks it) runs a command in it.
//
//   OPENWORK_URL=https://localhost:PORT OPENWORK_TOKEN=... node --experimental-websocket test/pty.mjs
//
// Prints one JSON line of what it saw; exits non-zero on any failure.
import { createOpencodeClient } from '@opencode-ai/sdk';

const url = process.env.OPENWORK_URL;
const token = process.env.OPENWORK_TOKEN;
if (!url || !token) throw new Error('set OPENWORK_URL and OPENWORK_TOKEN');
if (typeof WebSocket === 'undefined') throw new Error('no WebSocket: run node with --experimental-websocket (node 20) or node 22+');

const baseUrl = `${url}/opencode`;
const headers = { authorization: `Bearer ${token}` };
const opencode = createOpencodeClient({ baseUrl, headers });
// opencode's SSE stream, through the proxy: its first event says the client is connected.
const stop = new AbortController();
const events = await opencode.event.subscribe({ signal: stop.signal });
let firstEvent;
for await (const event of events.stream) {
  firstEvent = event;
  break;
}
stop.abort();
if (!firstEvent?.type) throw new Error(`no event from opencode's stream: ${JSON.stringify(firstEvent)}`);

const created = await opencode.pty.create({ body: { command: '/bin/sh', title: 'e2e' } });
if (created.error || !created.data) throw new Error(`pty.create: ${JSON.stringify(created.error)}`);
const id = created.data.id;

// undici's WebSocket (node's) takes headers: the token goes where every other request has it.
const socket = new WebSocket(`${baseUrl.replace(/^http/, 'ws')}/pty/${id}/connect`, { headers });
const decoder = new TextDecoder();
let seen = '';
const echoed = await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`no echo within 20 s; the terminal said: ${JSON.stringify(seen)}`)), 20000);
  socket.addEventListener('open', () => socket.send('echo pty-$((6*7))\n'));
  socket.addEventListener('message', async (event) => {
    const data = event.data;
    seen += typeof data === 'string' ? data : decoder.decode(data instanceof Blob ? await data.arrayBuffer() : data);
    if (seen.includes('pty-42')) {
      clearTimeout(timer);
      resolve(true);
    }
  });
  socket.addEventListener('error', (event) => reject(new Error(`websocket error: ${event.message ?? event.type}`)));
  socket.addEventListener('close', (event) => {
    if (!seen.includes('pty-42')) reject(new Error(`closed (${event.code}) before the echo; saw ${JSON.stringify(seen)}`));
  });
});
socket.close();
await opencode.pty.remove({ path: { id } });

console.log(JSON.stringify({ firstEvent: firstEvent.type, ptyId: id, echoed }));
