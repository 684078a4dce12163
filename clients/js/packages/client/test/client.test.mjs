// The client in Node, against a local HTTP server speaking the service's wire format
// (API.md §4, §5, §5b): SSE parsing, de-duplication, resume, snapshots, tokens.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import { createRequire } from 'node:module';
import { after, test } from 'node:test';
import vm from 'node:vm';
import { Changecast } from '@changecast/client';
import DefaultExport from '@changecast/client';

const require = createRequire(import.meta.url);
/** Longest any one wait may take. */
const WAIT_MS = 5000;

/** Resolves with the first value `register(resolve)` passes; fails after WAIT_MS. */
function next(what, register) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not within ${WAIT_MS} ms: ${what}`)), WAIT_MS);
    register((value) => { clearTimeout(timer); resolve(value); });
  });
}

/** A stand-in for the service: each request goes to the next handler queued for its path. */
async function fakeService() {
  const handlers = { '/v1/events': [], '/v1/snapshot': [] };
  const waiting = { '/v1/events': [], '/v1/snapshot': [] };
  const server = http.createServer((request, response) => {
    const url = new URL(request.url, 'http://x');
    const seen = { url, headers: request.headers, response };
    const waiter = waiting[url.pathname]?.shift();
    if (waiter) return waiter(seen);
    const handler = handlers[url.pathname]?.shift();
    if (handler) return handler(seen);
    response.writeHead(404).end();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const streams = new Set();
  return {
    baseUrl: `http://127.0.0.1:${server.address().port}`,
    /** The next request to `path`, answered by the caller. */
    request(path) {
      return next(`a request to ${path}`, (resolve) => waiting[path].push(resolve));
    },
    sse(response) {
      response.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      streams.add(response);
      response.on('close', () => streams.delete(response));
      return (text) => response.write(text);
    },
    json(response, status, body) {
      response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    },
    async close() {
      for (const response of streams) response.destroy();
      server.closeAllConnections();
      server.close();
    },
  };
}

const change = (id, resourceId, event = 'created') => ({
  type: 'resource_change', id, event, resource_type: 'ticket', tenant_id: 'acme',
  resource_id: resourceId, resource: { id: resourceId, title: `t${resourceId}` }, occurred_at: '2026-01-01T00:00:00Z',
});
const frame = (message, name = 'resource_change') => `id: ${message.id}\nevent: ${name}\ndata: ${JSON.stringify(message)}\n\n`;

/** A JWT (unsigned: the client only reads its expiry) expiring at `exp` seconds. */
const jwt = (exp) => ['{"alg":"HS256"}', JSON.stringify({ exp })]
  .map((part) => Buffer.from(part).toString('base64url')).join('.') + '.sig';

const clients = [];
const open = (options) => {
  const cc = new Changecast({ transport: 'sse', silenceTimeoutMs: 0, ...options });
  clients.push(cc);
  return cc;
};
after(() => clients.forEach((cc) => cc.close()));

test('the ESM and CommonJS builds export the same client, without globals', () => {
  const cjs = require('@changecast/client');
  assert.equal(typeof Changecast, 'function');
  assert.equal(DefaultExport, Changecast);
  assert.equal(typeof cjs.Changecast, 'function');
  assert.equal(cjs.default, cjs.Changecast);
  assert.equal(cjs.Changecast.VERSION, Changecast.VERSION);
  assert.equal(globalThis.Changecast, undefined, 'importing the package set a global');
  assert.throws(() => new Changecast({ transport: 'pigeon' }), /transport must be/);
});

test('SSE: selection in the query, changes by type once each, the cursor kept, resume with Last-Event-ID', async () => {
  const service = await fakeService();
  try {
    const cc = open({ baseUrl: service.baseUrl, token: 'tok', types: 'ticket, agent', filter: { state: 'eq.open', id: ['in', [1, 2]] } });
    const got = [];
    const third = next('the third change', (resolve) => cc.on('ticket', (c) => { got.push(c.id); if (got.length === 3) resolve(); }));
    const live = next('live', (resolve) => cc.on('status', (s) => s === 'live' && resolve()));
    const firstRequest = service.request('/v1/events');
    cc.start();
    const first = await firstRequest;
    assert.equal(first.headers.authorization, 'Bearer tok');
    assert.equal(first.headers['last-event-id'], undefined);
    assert.equal(first.url.searchParams.get('types'), 'ticket,agent');
    assert.deepEqual(first.url.searchParams.getAll('filter'), ['state=eq.open', 'id=in.(1,2)']);
    const send = service.sse(first.response);
    send('retry: 1000\nid: c0\n\n');
    await live;
    assert.equal(cc.lastEventId, 'c0', "the stream's first id moves the cursor");
    // A repeat (same id) is dropped; CRLF line ends and a missing space after ':' parse.
    send(frame(change('c1', '1')) + frame(change('c1', '1')) + `id:c2\r\nevent:resource_change\r\ndata:${JSON.stringify(change('c2', '2'))}\r\n\r\n`);
    const reconnect = service.request('/v1/events');
    send(': keepalive\n\n');
    first.response.end();
    const second = await reconnect;
    assert.equal(second.headers['last-event-id'], 'c2', 'resumed from the last change');
    service.sse(second.response)(frame(change('c2', '2')) + frame(change('c3', '3', 'updated')));
    await third;
    assert.deepEqual(got, ['c1', 'c2', 'c3']);
    assert.equal(cc.lastEventId, 'c3');
  } finally {
    await service.close();
  }
});

test('startFromSnapshot: rows first, then the stream from the snapshot cursor', async () => {
  const service = await fakeService();
  try {
    const cc = open({ baseUrl: service.baseUrl, token: 'tok', types: ['ticket'], events: ['created'], limit: 5 });
    const order = [];
    cc.on('snapshot', (s) => order.push(`snapshot:${s.cursor}`));
    const changed = next('a change', (resolve) => cc.on('change', (c) => { order.push(`change:${c.id}`); resolve(); }));
    const snapshotRequest = service.request('/v1/snapshot');
    const streamRequest = service.request('/v1/events');
    const started = cc.startFromSnapshot();
    const snapshot = await snapshotRequest;
    assert.equal(snapshot.url.searchParams.get('types'), 'ticket');
    assert.equal(snapshot.url.searchParams.get('limit'), '5');
    assert.equal(snapshot.url.searchParams.get('events'), null, 'a snapshot takes no events filter');
    service.json(snapshot.response, 200, { cursor: 's1', resources: { ticket: [{ id: '1' }] }, truncated: false });
    await started;
    const stream = await streamRequest;
    assert.equal(stream.headers['last-event-id'], 's1');
    assert.equal(stream.url.searchParams.get('events'), 'created');
    service.sse(stream.response)(frame(change('c9', '2')));
    await changed;
    assert.deepEqual(order, ['snapshot:s1', 'change:c9']);
  } finally {
    await service.close();
  }
});

test('a resync in snapshot mode reloads the snapshot before streaming on', async () => {
  const service = await fakeService();
  try {
    const cc = open({ baseUrl: service.baseUrl, token: 'tok', types: ['ticket'] });
    const snapshots = [];
    cc.on('snapshot', (s) => snapshots.push(s.cursor));
    const resynced = next('a resync', (resolve) => cc.on('resync', resolve));
    const firstSnapshot = service.request('/v1/snapshot');
    const firstStream = service.request('/v1/events');
    const started = cc.startFromSnapshot();
    service.json((await firstSnapshot).response, 200, { cursor: 'old', resources: { ticket: [] }, truncated: false });
    await started;
    const stream = await firstStream;
    const secondSnapshot = service.request('/v1/snapshot');
    const secondStream = service.request('/v1/events');
    service.sse(stream.response)(`event: resync\ndata: ${JSON.stringify({ type: 'resync', reason: 'cursor_expired', id: 'later' })}\n\n`);
    assert.equal((await resynced).reason, 'cursor_expired');
    service.json((await secondSnapshot).response, 200, { cursor: 'fresh', resources: { ticket: [{ id: '7' }] }, truncated: false });
    const again = await secondStream;
    assert.equal(again.headers['last-event-id'], 'fresh', 'streamed on from the new snapshot');
    assert.deepEqual(snapshots, ['old', 'fresh']);
    again.response.end();
  } finally {
    await service.close();
  }
});

test('snapshot mode asks for max_txn_events and reloads the snapshot on a bulk_change', async () => {
  const service = await fakeService();
  try {
    const cc = open({ baseUrl: service.baseUrl, token: 'tok', types: ['ticket'] });
    const snapshots = [];
    cc.on('snapshot', (s) => snapshots.push(s.cursor));
    const resynced = next('a resync', (resolve) => cc.on('resync', resolve));
    const firstSnapshot = service.request('/v1/snapshot');
    const firstStream = service.request('/v1/events');
    const started = cc.startFromSnapshot();
    const snapshot = await firstSnapshot;
    assert.equal(snapshot.url.searchParams.get('max_txn_events'), null, 'a snapshot takes no max_txn_events');
    service.json(snapshot.response, 200, { cursor: 'before', resources: { ticket: [] }, truncated: false });
    await started;
    const stream = await firstStream;
    assert.equal(stream.url.searchParams.get('max_txn_events'), '1000');
    const secondSnapshot = service.request('/v1/snapshot');
    const secondStream = service.request('/v1/events');
    service.sse(stream.response)(`event: resync\ndata: ${JSON.stringify({ type: 'resync', reason: 'bulk_change', id: 'past-bulk' })}\n\n`);
    assert.equal((await resynced).reason, 'bulk_change');
    service.json((await secondSnapshot).response, 200, { cursor: 'after-bulk', resources: { ticket: [{ id: '1' }] }, truncated: false });
    const again = await secondStream;
    assert.equal(again.headers['last-event-id'], 'after-bulk', 'streamed on from the reloaded snapshot');
    assert.equal(again.url.searchParams.get('max_txn_events'), '1000');
    assert.deepEqual(snapshots, ['before', 'after-bulk']);
    again.response.end();

    // start() sends it only when set; false turns it off in snapshot mode.
    const plain = open({ baseUrl: service.baseUrl, token: 'tok' });
    const plainRequest = service.request('/v1/events');
    plain.start();
    const plainStream = await plainRequest;
    assert.equal(plainStream.url.searchParams.get('max_txn_events'), null);
    plainStream.response.end();
    plain.close();
    const set = open({ baseUrl: service.baseUrl, token: 'tok', maxTxnEvents: 50 });
    const setRequest = service.request('/v1/events');
    set.start();
    const setStream = await setRequest;
    assert.equal(setStream.url.searchParams.get('max_txn_events'), '50');
    setStream.response.end();
    set.close();
  } finally {
    await service.close();
  }
});

test('an expired token without getToken stops with token_expired; with getToken it is refreshed', async () => {
  const service = await fakeService();
  try {
    const expired = jwt(Math.floor(Date.now() / 1000) - 60);
    const stopped = open({ baseUrl: service.baseUrl, token: expired });
    const closed = next('closed', (resolve) => stopped.on('status', (s, detail) => s === 'closed' && resolve(detail)));
    const refused = service.request('/v1/events');
    stopped.start();
    service.json((await refused).response, 401, { error: 'token_expired', message: 'the token expired' });
    assert.equal((await closed).code, 'token_expired');
    assert.match(stopped.error.message, /getToken/);

    let asked = 0;
    const refreshed = open({ baseUrl: service.baseUrl, token: 'old', getToken: async () => `new-${++asked}` });
    const first = service.request('/v1/events');
    refreshed.start();
    const stream = await first;
    assert.equal(stream.headers.authorization, 'Bearer old');
    const second = service.request('/v1/events');
    service.sse(stream.response)(`id: c1\n\nevent: auth_expired\ndata: {"type":"auth_expired"}\n\n`);
    const resumed = await second;
    assert.equal(resumed.headers.authorization, 'Bearer new-1');
    assert.equal(resumed.headers['last-event-id'], 'c1');
    resumed.response.end();
  } finally {
    await service.close();
  }
});

test('a refused filter stops with the server error instead of retrying', async () => {
  const service = await fakeService();
  try {
    const cc = open({ baseUrl: service.baseUrl, token: 'tok', filter: 'nonsense' });
    const closed = next('closed', (resolve) => cc.on('status', (s, detail) => s === 'closed' && resolve(detail)));
    const request = service.request('/v1/events');
    cc.start();
    service.json((await request).response, 400, { error: 'invalid_filter', message: '`nonsense` is not a filter' });
    const detail = await closed;
    assert.equal(detail.code, 'invalid_filter');
    assert.match(detail.message, /nonsense/);
  } finally {
    await service.close();
  }
});

test('a request outside the token scope (403 forbidden) stops the client plainly, without retrying', async () => {
  const service = await fakeService();
  try {
    const cc = open({ baseUrl: service.baseUrl, token: 'tok', types: ['ticket', 'agent'] });
    const errors = [];
    cc.on('error', (error) => errors.push(error));
    const closed = next('closed', (resolve) => cc.on('status', (s, detail) => s === 'closed' && resolve(detail)));
    const request = service.request('/v1/events');
    cc.start();
    service.json((await request).response, 403, { error: 'forbidden', message: 'type `agent` is outside this token\'s scope' });
    const detail = await closed;
    assert.equal(detail.code, 'forbidden');
    assert.match(detail.message, /outside this token's scope/);
    assert.deepEqual(errors.map((e) => e.code), ['forbidden']);
    assert.equal(cc.error.code, 'forbidden');
    // No second request: a retry would be refused again. (Waits past the first backoff.)
    const again = service.request('/v1/events').then(() => 'retried', () => 'none');
    const outcome = await Promise.race([again, new Promise((resolve) => setTimeout(() => resolve('none'), 1500))]);
    assert.equal(outcome, 'none');
    assert.equal(cc.status, 'closed');
  } finally {
    await service.close();
  }
});

test('a forbidden snapshot rejects startFromSnapshot with the code; a forbidden stats() leaves the stream alone', async () => {
  const service = await fakeService();
  try {
    const cc = open({ baseUrl: service.baseUrl, token: 'tok', types: ['profile'] });
    const closed = next('closed', (resolve) => cc.on('status', (s, detail) => s === 'closed' && resolve(detail)));
    const request = service.request('/v1/snapshot');
    const started = cc.startFromSnapshot();
    service.json((await request).response, 403, { error: 'forbidden', message: 'type `profile` is outside this token\'s scope' });
    await assert.rejects(started, (error) => error.code === 'forbidden' && error.status === 403);
    assert.equal((await closed).code, 'forbidden');
  } finally {
    await service.close();
  }
  // stats() on a token with `stats: false`: the promise rejects, the client is untouched.
  const stats = http.createServer((request, response) => {
    response.writeHead(403, { 'content-type': 'application/json' })
      .end(JSON.stringify({ error: 'forbidden', message: 'statistics are outside this token\'s scope' }));
  });
  stats.listen(0, '127.0.0.1');
  await once(stats, 'listening');
  try {
    const cc = open({ baseUrl: `http://127.0.0.1:${stats.address().port}`, token: 'tok' });
    await assert.rejects(cc.stats(), (error) => error.code === 'forbidden');
    assert.equal(cc.error, null);
  } finally {
    stats.close();
  }
});

test('WebSocket: a forbidden error frame stops the client instead of reconnecting; other errors only report', async () => {
  const sockets = [];
  class FakeSocket {
    constructor(url) { this.url = url; this.readyState = 0; this.sent = []; sockets.push(this); }
    send(text) { this.sent.push(JSON.parse(text)); }
    close() { this.readyState = 3; }
    open() { this.readyState = 1; this.onopen(); }
    receive(message) { this.onmessage({ data: JSON.stringify(message) }); }
  }
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = FakeSocket;
  try {
    const cc = open({ baseUrl: 'http://127.0.0.1:9', token: 'tok', transport: 'ws', types: ['ticket'] });
    const errors = [];
    cc.on('error', (error) => errors.push(error.code));
    const live = next('live', (resolve) => cc.on('status', (s) => s === 'live' && resolve()));
    cc.start();
    const socket = await next('a socket', (resolve) => { const poll = () => (sockets[0] ? resolve(sockets[0]) : setTimeout(poll, 5)); poll(); });
    socket.open();
    assert.deepEqual(socket.sent[0].resource_types, ['ticket']);
    socket.receive({ type: 'subscription_confirmed', resource_types: ['ticket'] });
    await live;
    // A bad filter on a live re-subscribe is reported; the connection goes on.
    socket.receive({ type: 'error', code: 'invalid_filter', message: 'bad filter' });
    assert.equal(cc.status, 'live');
    const closed = next('closed', (resolve) => cc.on('status', (s, detail) => s === 'closed' && resolve(detail)));
    cc.subscribe({ types: ['agent'] });
    assert.deepEqual(socket.sent[1].resource_types, ['agent']);
    socket.receive({ type: 'error', code: 'forbidden', message: 'type `agent` is outside this token\'s scope' });
    const detail = await closed;
    assert.equal(detail.code, 'forbidden');
    assert.deepEqual(errors, ['invalid_filter', 'forbidden']);
    assert.equal(socket.readyState, 3, 'the socket is closed');
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(sockets.length, 1, 'no reconnect after forbidden');
  } finally {
    globalThis.WebSocket = saved;
  }
});

test("the service's /changecast.js, made from the same source, runs as a classic script and sets the global", async () => {
  const asset = await readFile(new URL('../../../../../src/http/assets/changecast.js', import.meta.url), 'utf8');
  assert.doesNotMatch(asset, /\nexport /, 'a classic script cannot hold export');
  const page = vm.createContext({});
  vm.runInContext(asset, page);
  assert.equal(typeof page.Changecast, 'function');
  assert.equal(page.Changecast.VERSION, Changecast.VERSION);
  assert.equal(typeof new page.Changecast({ token: 't' }).on, 'function');
});
