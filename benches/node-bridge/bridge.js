// A naive LISTEN -> SSE bridge, as applications write them: one LISTEN connection, every
// NOTIFY payload (the row as JSON, from the trigger of sql/bench/setup.sql) parsed and
// written as an SSE event to every subscriber of the row's tenant. No authentication
// (`GET /events?tenant=t3`), no journal, no resume: a notification that arrives while
// a subscriber is disconnected, or while this process is down, is gone.
//
//   DATABASE_URL=postgres://postgres@127.0.0.1:5432/changecast_bench node bridge.js
//
// Environment: DATABASE_URL (required), BRIDGE_CHANNEL (default bench_bridge),
// PORT (default 0: any free port), HOST (default 127.0.0.1).
// Prints the port it listens on as one line on stdout, then serves until killed.

'use strict';

const http = require('node:http');
const { Client } = require('pg');

const databaseUrl = process.env.DATABASE_URL;
const channel = process.env.BRIDGE_CHANNEL || 'bench_bridge';
const host = process.env.HOST || '127.0.0.1';
const port = Number(process.env.PORT || 0);

if (!databaseUrl) {
  console.error('bridge: DATABASE_URL is not set');
  process.exit(2);
}
if (!/^[a-z_][a-z0-9_]*$/.test(channel)) {
  console.error(`bridge: BRIDGE_CHANNEL ${JSON.stringify(channel)} is not a plain lowercase identifier`);
  process.exit(2);
}

/** Open responses per tenant. */
const subscribers = new Map();

function subscribe(tenant, res) {
  let set = subscribers.get(tenant);
  if (!set) {
    set = new Set();
    subscribers.set(tenant, set);
  }
  set.add(res);
  res.on('close', () => {
    set.delete(res);
    if (set.size === 0 && subscribers.get(tenant) === set) subscribers.delete(tenant);
  });
}

function deliver(payload) {
  let row;
  try {
    row = JSON.parse(payload);
  } catch (error) {
    console.error(`bridge: payload is not JSON: ${error.message}`);
    return;
  }
  const set = subscribers.get(String(row.tenant_id));
  if (!set) return;
  const frame = `event: resource_change\ndata: ${JSON.stringify({ type: 'resource_change', event: 'created', resource: row })}\n\n`;
  for (const res of set) res.write(frame);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://bridge');
  const tenant = url.searchParams.get('tenant');
  if (req.method !== 'GET' || url.pathname !== '/events' || !tenant) {
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('GET /events?tenant=<tenant>\n');
    return;
  }
  req.socket.setNoDelay(true);
  req.socket.setTimeout(0);
  res.writeHead(200, {
    'content-type': 'text/event-stream',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
  });
  // A first comment, so the subscriber knows the stream is open.
  res.write(': connected\n\n');
  subscribe(tenant, res);
});
server.keepAliveTimeout = 0;
server.requestTimeout = 0;
server.headersTimeout = 60_000;
server.maxConnections = Infinity;

async function main() {
  const db = new Client({ connectionString: databaseUrl, application_name: 'node-bridge' });
  db.on('notification', (message) => deliver(message.payload));
  db.on('error', (error) => {
    console.error(`bridge: database connection failed: ${error.message}`);
    process.exit(1);
  });
  db.on('end', () => {
    console.error('bridge: database connection ended');
    process.exit(1);
  });
  await db.connect();
  await db.query(`LISTEN ${channel}`);
  server.listen(port, host, () => {
    console.log(server.address().port);
  });
}

process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));

main().catch((error) => {
  console.error(`bridge: ${error.message}`);
  process.exit(1);
});
