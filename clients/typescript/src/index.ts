// The typed client of openwork-server-v2: the generated SDK (one function per route, typed
// bodies and errors) and the typed event-stream reader.
export * from './generated/index.js';
export * from './events.js';
