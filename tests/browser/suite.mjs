// The browser scenarios of tests/it/browser.rs, in one headless Chromium.
// Usage: node suite.mjs <base-url>  (CHANGECAST_SCREENSHOT: where to save the dashboard's)
//
// Talks to the Rust test over stdio: `REQ <n> <json>` asks it to write rows, mint tokens,
// kill the listener or restart the service; it answers `RES <n> <json>`. Each scenario
// prints `PASS <name> (<ms> ms)` or `FAIL <name>: <reason>`; `DONE` ends the run.
// Test pages live in pages/ and are served under <base>/test/ by request interception,
// so the service serves nothing for tests.
import { chromium } from 'playwright-core';
import * as esbuild from 'esbuild';
import { spawn } from 'node:child_process';
import { readFile, writeFile, mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const examples = path.join(here, '../../examples/web');
const packages = path.join(here, '../../clients/js/packages');
const base = process.argv[2];
/** Longest any one wait in a scenario may take. */
const TIMEOUT = 15000;

const out = (line) => process.stdout.write(`${line}\n`);

// ---- the Rust side ----
let nextRequest = 0;
const pending = new Map();
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const match = /^RES (\d+) (.*)$/.exec(line);
  if (!match) return;
  const waiter = pending.get(Number(match[1]));
  pending.delete(Number(match[1]));
  const answer = JSON.parse(match[2]);
  if (answer.ok) waiter.resolve(answer.value);
  else waiter.reject(new Error(`backstage: ${answer.error}`));
});
function rust(op, args = {}) {
  return new Promise((resolve, reject) => {
    const id = ++nextRequest;
    pending.set(id, { resolve, reject });
    out(`REQ ${id} ${JSON.stringify({ op, ...args })}`);
  });
}
const sql = (text, params = []) => rust('query', { sql: text, params });
const token = (tenant, ttl_s = 3600) => rust('token', { tenant, ttl_s });
async function insertTicket(tenant, title, state = 'open') {
  const rows = await sql(
    'insert into tickets (tenant_id, title, state, updated_at) values ($1, $2, $3, now()) returning id::text as id',
    [tenant, title, state]);
  return rows[0].id;
}
async function insertAgent(tenant, name, heartbeatAgo = '0 seconds') {
  const rows = await sql(
    `insert into agents (tenant_id, name, status, last_heartbeat, updated_at)
     values ($1, $2, 'busy', now() - ($3::text)::interval, now()) returning id::text as id`,
    [tenant, name, heartbeatAgo]);
  return rows[0].id;
}

// ---- assertions ----
function check(condition, message) {
  if (!condition) throw new Error(message);
}
/** A scenario for a server feature that may not exist yet: `SKIP` unless `probe()` finds it. */
async function optional(name, probe, body) {
  if (!(await probe())) {
    out(`SKIP ${name}: the server does not have it yet`);
    return;
  }
  await scenario(name, body);
}
async function scenario(name, body) {
  const started = Date.now();
  try {
    await body();
    out(`PASS ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    out(`FAIL ${name}: ${String(error && error.message || error).split('\n')[0]}`);
  }
}
/** Waits until `fn(arg)` is truthy in the page; names what it waited for on timeout. */
async function until(page, what, fn, arg) {
  try {
    return await (await page.waitForFunction(fn, arg, { timeout: TIMEOUT, polling: 50 })).jsonValue();
  } catch (error) {
    throw new Error(`not within ${TIMEOUT} ms: ${what}`);
  }
}

// ---- what the pages load ----
async function bundleApp() {
  const result = await esbuild.build({
    entryPoints: [path.join(here, 'pages/app.tsx')],
    bundle: true,
    format: 'esm',
    write: false,
    jsx: 'automatic',
    nodePaths: [path.join(here, 'node_modules')],
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'silent',
    plugins: [{
      name: 'changecast-from-the-service',
      setup(build) {
        // The client: the service's own /changecast.js (made from the package's source), as a module.
        build.onResolve({ filter: /^@changecast\/client$|changecast\.js$/ }, () => ({ path: '/changecast.js', external: true }));
        // One React (and one TanStack Query) for the page and the packages: this suite's.
        build.onResolve({ filter: /^(react|react-dom|@tanstack\/query-core)(\/.*)?$/ }, (args) => {
          if (args.pluginData === 'ours') return undefined;
          return build.resolve(args.path, { kind: args.kind, resolveDir: here, pluginData: 'ours' });
        });
        // The React and TanStack Query packages, from their TypeScript sources.
        build.onResolve({ filter: /^@changecast\/(react|tanstack-query)$/ }, (args) =>
          ({ path: path.join(packages, args.path.slice('@changecast/'.length), 'src/index.ts') }));
      },
    }],
  });
  return result.outputFiles[0].text;
}

/** tsc --strict over the examples and the served .d.ts; resolves to tsc's exit and output. */
async function typecheck() {
  const dir = path.join(here, 'node_modules/.cache/changecast-typecheck');
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const dts = await (await fetch(`${base}/changecast.d.ts`)).text();
  await writeFile(path.join(dir, 'changecast.d.ts'), dts);
  for (const file of await readdir(examples)) {
    if (file.endsWith('.ts')) await writeFile(path.join(dir, file), await readFile(path.join(examples, file)));
  }
  // The declarations must also refuse what is wrong, not accept anything.
  await writeFile(path.join(dir, 'refused.ts'), `
import { Changecast, type Status } from './changecast.js';
interface Ticket { id: string; title: string; [column: string]: unknown }
const cc = new Changecast<{ ticket: Ticket }>({ token: 't' });
cc.on('ticket', (change) => {
  const title: string = change.resource.title;
  const moved: string[] | undefined = change.changed;
  // @ts-expect-error title is a string
  const wrong: number = change.resource.title;
  void title; void moved; void wrong;
});
// @ts-expect-error no such transport
new Changecast({ transport: 'carrier-pigeon' });
// @ts-expect-error status is one of five values
const s: 'open' = cc.status;
const ok: Status = cc.status;
cc.on('resync', (info) => { const reason: string = info.reason; void reason; });
cc.on('event', (event) => { const topic: string = event.topic; void topic; });
// @ts-expect-error subscribe takes a selection
void cc.subscribe(42);
window.Changecast === Changecast;
void s; void ok;
`);
  await writeFile(path.join(dir, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      strict: true, noEmit: true, target: 'es2022', module: 'esnext', moduleResolution: 'bundler',
      lib: ['es2022', 'dom', 'dom.iterable'], jsx: 'react-jsx', types: [], skipLibCheck: true,
      noUnusedLocals: false,
    },
    include: ['*.ts'],
  }));
  return new Promise((resolve) => {
    const tsc = spawn(process.execPath, [path.join(here, 'node_modules/typescript/bin/tsc'), '-p', dir]);
    let output = '';
    tsc.stdout.on('data', (d) => { output += d; });
    tsc.stderr.on('data', (d) => { output += d; });
    tsc.on('close', (code) => resolve({ code, output }));
  });
}

// ---- run ----
const browser = await chromium.launch({
  executablePath: process.env.CHANGECAST_CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const typechecked = typecheck();
  const bundle = await bundleApp();
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  // Scripts under /test/ are served here. Pages are not: a document that did not come
  // from the service's loopback address may not open a WebSocket to it (Chromium's local
  // network access checks), so a test page is written into a document that did.
  await context.route(`${base}/test/**`, async (route) => {
    const file = new URL(route.request().url()).pathname.slice('/test/'.length);
    if (file === 'app.js') return route.fulfill({ body: bundle, contentType: 'text/javascript' });
    const body = await readFile(path.join(here, 'pages', path.basename(file)));
    return route.fulfill({ body, contentType: file.endsWith('.html') ? 'text/html' : 'text/javascript' });
  });
  // Every status the dashboard's indicator showed, in order.
  await context.addInitScript(() => {
    window.__indicator = [];
    new MutationObserver(() => {
      const text = document.getElementById('indicator-text')?.textContent;
      if (text && window.__indicator[window.__indicator.length - 1] !== text) window.__indicator.push(text);
    }).observe(document, { subtree: true, childList: true, characterData: true });
  });
  const newPage = async () => {
    const page = await context.newPage();
    page.on('pageerror', (error) => out(`PAGEERROR ${error.message}`));
    page.on('console', (message) => { if (message.type() === 'error') out(`LOG console: ${message.text()}`); });
    return page;
  };
  const load = async (page, file) => {
    await page.goto(`${base}/healthz`);
    await page.setContent(await readFile(path.join(here, 'pages', file), 'utf8'));
  };
  const harness = async () => {
    const page = await newPage();
    await load(page, 'harness.html');
    await until(page, 'the harness loaded', () => window.harnessReady === true);
    return page;
  };
  const dashboard = async (tenant, page) => {
    page = page || await newPage();
    await page.goto(`${base}/?access_token=${await token(tenant)}`);
    await until(page, 'the dashboard is live', () => document.getElementById('indicator').dataset.state === 'live');
    return page;
  };
  const ticketIn = (state, id) => `#board .column[data-state="${state}"] .ticket[data-id="${id}"]`;
  const noDuplicates = async (page, name) => {
    const ids = await page.evaluate((n) => window.clients[n].rec.changes.map((c) => c.id), name);
    check(new Set(ids).size === ids.length, `client ${name} delivered a change twice`);
  };

  // Each client scenario: one page, a tenant of its own.
  const onTicket = (transport) => async () => {
    const tenant = `on-${transport}`;
    const page = await harness();
    await page.evaluate(([t, transport]) => {
      window.openClient('c', { token: t, transport, types: ['ticket', 'agent'] });
      window.extra = 0;
      window.offExtra = window.clients.c.cc.on('ticket', () => { window.extra += 1; });
    }, [await token(tenant), transport]);
    await until(page, 'live', () => window.clients.c.cc.status === 'live');
    check(await page.evaluate(() => window.clients.c.cc.connectedVia) === transport, `connected via ${transport}`);
    const ticket = await insertTicket(tenant, 'a ticket');
    const agent = await insertAgent(tenant, 'an agent');
    await until(page, 'both changes', ([a, b]) => window.got('c').includes(a) && window.got('c').includes(b), [ticket, agent]);
    const byType = await page.evaluate(() => window.clients.c.rec.byType.map((c) => `${c.resource_type}:${c.resource.id}`));
    check(byType.includes(`ticket:${ticket}`) && byType.includes(`agent:${agent}`), 'each type handler got its change');
    const ticketOnly = await page.evaluate(() => window.extra);
    check(ticketOnly === 1, `on('ticket') got ${ticketOnly} changes, not just the ticket`);
    await page.evaluate(() => window.offExtra());
    const later = await insertTicket(tenant, 'after off()');
    await until(page, 'the later ticket', (id) => window.got('c').includes(id), later);
    check(await page.evaluate(() => window.extra) === 1, 'the unsubscribed handler was still called');
    await noDuplicates(page, 'c');
    if (transport === 'ws') {
      // 'auto' (the default) takes WebSocket where it connects.
      await page.evaluate((t) => window.openClient('auto', { token: t, types: ['ticket'] }), await token(tenant));
      await until(page, 'auto live', () => window.clients.auto.cc.status === 'live');
      check(await page.evaluate(() => window.clients.auto.cc.connectedVia) === 'ws', "'auto' did not use WebSocket");
    }
    await page.close();
  };

  const tokenRefresh = (transport) => async () => {
    const tenant = `refresh-${transport}`;
    const page = await harness();
    // Minted last: it must still be valid when the client connects (exp is in whole seconds).
    const long = await token(tenant);
    const short = await token(tenant, 5);
    await page.evaluate(([short, long, transport]) => {
      window.asked = 0;
      window.openClient('t', {
        token: short, transport, types: ['ticket'],
        // Held until the test lets go, so a row can be written while the client waits.
        getToken: () => { window.asked += 1; return new Promise((resolve) => { window.release = () => resolve(long); }); },
      });
    }, [short, long, transport]);
    await until(page, 'live', () => window.clients.t.cc.status === 'live');
    check(await page.evaluate(() => window.asked) === 0, 'the short token expired before the client connected');
    // Arrives before or after the refresh, depending on how fast this machine is.
    const before = await insertTicket(tenant, 'before expiry');
    await until(page, 'getToken asked after the token expired', () => window.asked >= 1 && !!window.release);
    const during = await insertTicket(tenant, 'while refreshing');
    await page.evaluate(() => window.release());
    await until(page, 'the tickets written before and while refreshing', ([a, b]) => window.got('t').includes(a) && window.got('t').includes(b), [before, during]);
    const after = await insertTicket(tenant, 'after refresh');
    await until(page, 'the ticket after the refresh', (id) => window.got('t').includes(id), after);
    const state = await page.evaluate(() => ({ status: window.clients.t.cc.status, via: window.clients.t.cc.connectedVia, statuses: window.clients.t.rec.statuses }));
    check(state.status === 'live' && state.via === transport, `live again over ${transport}: ${JSON.stringify(state)}`);
    check(state.statuses.includes('reconnecting:token_refresh'), `the refresh shows in the status: ${state.statuses}`);
    await noDuplicates(page, 't');
    await page.close();
  };

  await scenario('client: plain <script> with the old options, and ES module import', async () => {
    const page = await harness();
    const loaded = await page.evaluate(() => [typeof window.classic, typeof window.Module, window.classic.VERSION === window.Module.VERSION]);
    check(loaded[0] === 'function' && loaded[1] === 'function' && loaded[2], `loaded: ${loaded}`);
    // The constructor options of the first version, on the plain-script build.
    const tenant = 'legacy';
    const old = await insertTicket(tenant, 'in the snapshot');
    await page.evaluate((t) => {
      window.legacy = { snapshot: null, changes: [], statuses: [] };
      window.legacyClient = new window.classic({
        token: t,
        types: ['ticket'],
        onSnapshot: (resources) => { window.legacy.snapshot = resources; },
        onChange: (change) => window.legacy.changes.push(change.resource.id),
        onStatus: (status) => window.legacy.statuses.push(status),
      });
      return window.legacyClient.startFromSnapshot();
    }, await token(tenant));
    check(await page.evaluate((id) => window.legacy.snapshot.ticket.some((r) => r.id === id), old), 'onSnapshot got the rows by type');
    const live = await insertTicket(tenant, 'live');
    await until(page, 'onChange called', (id) => window.legacy.changes.includes(id), live);
    check((await page.evaluate(() => window.legacy.statuses)).includes('live'), 'onStatus called');
    const plain = await (await fetch(`${base}/changecast.js`)).text();
    const module = await (await fetch(`${base}/changecast.js?format=module`)).text();
    check(!/\nexport /.test(plain), 'the classic form has no export');
    check(module.includes('export { Changecast }'), 'the module form exports Changecast');
    await page.close();
  });

  await Promise.all([
    scenario("client: on('ticket') over SSE", onTicket('sse')),
    scenario("client: on('ticket') over WebSocket", onTicket('ws')),

    scenario('client: auto falls back to SSE when WebSocket is blocked', async () => {
      const page = await newPage();
      // A proxy that refuses upgrades: every WebSocket fails before it opens.
      await page.addInitScript(() => {
        window.wsTried = 0;
        window.WebSocket = class {
          constructor() {
            window.wsTried += 1;
            this.readyState = 0;
            setTimeout(() => { this.readyState = 3; this.onerror?.(new Event('error')); this.onclose?.({ code: 1006, reason: '' }); }, 30);
          }
          send() { throw new Error('not open'); }
          close() {}
        };
      });
      await load(page, 'harness.html');
      await until(page, 'harness', () => window.harnessReady === true);
      await page.evaluate((t) => window.openClient('a', { token: t, transport: 'auto', types: ['ticket'] }), await token('fallback'));
      await until(page, 'live', () => window.clients.a.cc.status === 'live');
      const state = await page.evaluate(() => ({ via: window.clients.a.cc.connectedVia, tried: window.wsTried }));
      check(state.tried >= 1, 'WebSocket was tried first');
      check(state.via === 'sse', `fell back to SSE, not ${state.via}`);
      const id = await insertTicket('fallback', 'over SSE');
      await until(page, 'the ticket over SSE', (i) => window.got('a').includes(i), id);
      await page.close();
    }),

    scenario('client: subscribe() switches filters over SSE without losing a row written meanwhile', async () => {
      const tenant = 'switch-sse';
      const page = await harness();
      const streams = [];
      let release = null;
      await page.route('**/v1/events**', async (route) => {
        streams.push(route.request().headers()['last-event-id'] || null);
        // Hold the reconnection until the test wrote its rows: they commit mid-switch.
        if (streams.length === 2) await new Promise((resolve) => { release = resolve; });
        await route.continue();
      });
      await page.evaluate((t) => window.openClient('s', { token: t, transport: 'sse', types: ['ticket'] }), await token(tenant));
      await until(page, 'live', () => window.clients.s.cc.status === 'live');
      // Nothing received yet: the switch must still resume from the stream's start.
      await page.evaluate(() => { window.clients.s.cc.subscribe({ types: ['agent'] }); });
      const waited = Date.now();
      while (!release && Date.now() - waited < TIMEOUT) await new Promise((r) => setTimeout(r, 20));
      check(release, 'the client reopened the stream');
      const agent = await insertAgent(tenant, 'written during the switch');
      const ticket = await insertTicket(tenant, 'no longer selected');
      release();
      const marker = await insertAgent(tenant, 'after the switch');
      await until(page, 'the agents written during and after the switch', ([a, m]) => window.got('s').includes(a) && window.got('s').includes(m), [agent, marker]);
      check(!(await page.evaluate(() => window.got('s'))).includes(ticket), 'a ticket arrived after switching to agents');
      check(streams[1] !== null, 'the new stream resumed from a cursor');
      await noDuplicates(page, 's');
      await page.close();
    }),

    scenario('client: subscribe() switches filters over WebSocket without losing a row', async () => {
      const tenant = 'switch-ws';
      const page = await harness();
      await page.evaluate((t) => window.openClient('w', { token: t, transport: 'ws', types: ['ticket'] }), await token(tenant));
      await until(page, 'live', () => window.clients.w.cc.status === 'live');
      const first = await insertTicket(tenant, 'before the switch');
      await until(page, 'the first ticket', (id) => window.got('w').includes(id), first);
      await page.evaluate(() => { window.clients.w.cc.subscribe({ types: ['agent'] }); });
      const agent = await insertAgent(tenant, 'written during the switch');
      const ticket = await insertTicket(tenant, 'no longer selected');
      const marker = await insertAgent(tenant, 'after the switch');
      await until(page, 'the agents', ([a, m]) => window.got('w').includes(a) && window.got('w').includes(m), [agent, marker]);
      const state = await page.evaluate(() => ({ got: window.got('w'), statuses: window.clients.w.rec.statuses }));
      check(!state.got.includes(ticket), 'a ticket arrived after switching to agents');
      check(state.statuses.join() === 'connecting,live', `the switch reused the socket: ${state.statuses}`);
      await noDuplicates(page, 'w');
      await page.close();
    }),

    scenario('client: an expiring token is refreshed through getToken (SSE), nothing lost', tokenRefresh('sse')),
    scenario('client: an expiring token is refreshed through getToken (WebSocket), nothing lost', tokenRefresh('ws')),

    scenario('client: an expired token without getToken stops with a clear error', async () => {
      const page = await harness();
      const short = await token('expired', 1);
      await page.evaluate((t) => {
        window.openClient('x1', { token: t, transport: 'sse', types: ['ticket'] });
        window.openClient('x2', { token: t, transport: 'ws', types: ['ticket'] });
      }, short);
      for (const name of ['x1', 'x2']) {
        await until(page, `${name} stops`, (n) => window.clients[n].cc.status === 'closed', name);
        const state = await page.evaluate((n) => ({ error: window.clients[n].cc.error, statuses: window.clients[n].rec.statuses }), name);
        check(state.error && state.error.code === 'token_expired' && /getToken/.test(state.error.message), `${name}: ${JSON.stringify(state)}`);
        check(state.statuses[state.statuses.length - 1] === 'closed:token_expired', `${name} says why: ${state.statuses}`);
      }
      await page.close();
    }),

    scenario('client: after a resync whose snapshot fails, it retries before streaming on', async () => {
      const tenant = 'resync';
      await insertTicket(tenant, 'in the snapshot');
      const page = await harness();
      let snapshots = 0;
      const streams = [];
      await page.route('**/v1/snapshot**', async (route) => {
        snapshots += 1;
        if (snapshots === 1) {
          // A cursor the server cannot honour: the stream answers with a resync.
          const response = await route.fetch();
          const body = await response.json();
          return route.fulfill({ response, json: { ...body, cursor: 'not-a-cursor' } });
        }
        if (snapshots === 2) return route.fulfill({ status: 503, json: { error: 'unavailable', message: 'test: fails once' } });
        return route.continue();
      });
      await page.route('**/v1/events**', async (route) => {
        streams.push(route.request().headers()['last-event-id'] || null);
        await route.continue();
      });
      await page.evaluate((t) => window.openClient('r', { token: t, transport: 'sse', types: ['ticket'] }, 'snapshot'), await token(tenant));
      await until(page, 'the second snapshot, then live', () => window.clients.r.rec.snapshots.length === 2 && window.clients.r.cc.status === 'live');
      const rec = await page.evaluate(() => ({ resyncs: window.clients.r.rec.resyncs, statuses: window.clients.r.rec.statuses, cursor: window.clients.r.rec.snapshots[1].cursor }));
      check(rec.resyncs.length === 1, `one resync: ${JSON.stringify(rec.resyncs)}`);
      check(snapshots === 3, `the failed snapshot was retried (${snapshots} requests)`);
      check(streams.length === 2 && streams[0] === 'not-a-cursor' && streams[1] === rec.cursor,
        `no stream resumed on stale state between the resync and the new snapshot: ${JSON.stringify(streams)}`);
      check(rec.statuses.some((s) => s.startsWith('reconnecting')), `reconnecting shown: ${rec.statuses}`);
      const id = await insertTicket(tenant, 'after the resync');
      await until(page, 'a change after the resync', (i) => window.got('r').includes(i), id);
      await page.close();
    }),

    scenario('react: useChangecast reports isLive and delivers changes', async () => {
      const page = await newPage();
      await load(page, 'react.html');
      await until(page, 'the app bundle', () => window.appReady === true);
      await page.evaluate((t) => window.mountReact(t), await token('react'));
      await until(page, 'isLive', () => document.getElementById('live')?.textContent === 'true');
      check(await page.textContent('#status') === 'live', 'status is live');
      check(await page.textContent('#last') === 'none', 'no event yet');
      await insertTicket('react', 'rendered by React');
      await until(page, 'the ticket rendered', () => document.getElementById('titles').textContent.includes('rendered by React'));
      check(await page.textContent('#last') === 'seen', 'lastEventAt set');
      await page.close();
    }),

    scenario('react: useLiveSnapshot keeps a list from the snapshot and its stream', async () => {
      const tenant = 'live-list';
      const [kept, gone] = [await insertTicket(tenant, 'in the snapshot'), await insertTicket(tenant, 'deleted later')];
      const page = await newPage();
      await load(page, 'react.html');
      await until(page, 'the app bundle', () => window.appReady === true);
      await page.evaluate((t) => window.mountLiveList(t), await token(tenant));
      const titles = () => page.evaluate(() => Array.from(document.querySelectorAll('#live-list li')).map((li) => li.textContent));
      await until(page, 'the snapshot rendered, then live', () => document.getElementById('live-list-state')?.textContent === 'live');
      check(JSON.stringify((await titles()).sort()) === JSON.stringify(['deleted later', 'in the snapshot']), `the snapshot: ${await titles()}`);
      const added = await insertTicket(tenant, 'created live');
      await sql("update tickets set title = 'renamed live' where id::text = $1 returning id", [kept]);
      await sql('delete from tickets where id::text = $1 returning id', [gone]);
      await until(page, 'created, updated and deleted applied', () =>
        Array.from(document.querySelectorAll('#live-list li')).map((li) => li.textContent).join() === 'renamed live,created live');
      const ids = await page.evaluate(() => Array.from(document.querySelectorAll('#live-list li')).map((li) => li.dataset.id));
      check(JSON.stringify(ids) === JSON.stringify([kept, added]), `by resource id: ${ids}`);
      await page.close();
    }),

    scenario('tanstack: syncQueries invalidates the right keys and patches lists', async () => {
      const tenant = 'tanstack';
      const [x, y] = [await insertTicket(tenant, 'x'), await insertTicket(tenant, 'y')];
      const page = await newPage();
      await load(page, 'react.html');
      await until(page, 'the app bundle', () => window.appReady === true);
      await page.evaluate(([t, ids]) => window.startQueries(t, ids), [await token(tenant), [x, y]]);
      const invalid = (key) => page.evaluate((k) => window.queries.getQueryState(k).isInvalidated, key);
      check(!(await invalid(['tickets'])) && !(await invalid(['ticket', x])), 'nothing invalid before a change');
      await sql("update tickets set title = 'x, renamed' where id::text = $1 returning id", [x]);
      await until(page, "['ticket', x] invalidated", (id) => window.queries.getQueryState(['ticket', id]).isInvalidated, x);
      check(await invalid(['tickets']), "['tickets'] invalidated");
      check(!(await invalid(['ticket', y])), "['ticket', y] left alone");
      check(!(await invalid(['agents'])), "['agents'] left alone");
      const agent = await insertAgent(tenant, 'patched in');
      await until(page, 'the agent patched into the cached list', (id) => (window.queries.getQueryData(['agents']) || []).some((a) => a.id === id), agent);
      check(!(await invalid(['agents'])), "['agents'] patched, not refetched");
      await page.close();
    }),

    scenario('dashboard: a failed first snapshot is retried', async () => {
      await insertTicket('retry', 'shown once the snapshot works');
      const page = await newPage();
      let snapshots = 0;
      await page.route('**/v1/snapshot**', (route) => {
        snapshots += 1;
        return snapshots === 1
          ? route.fulfill({ status: 503, json: { error: 'unavailable', message: 'test: restarting' } })
          : route.continue();
      });
      await dashboard('retry', page);
      await page.waitForSelector('#board .ticket', { timeout: TIMEOUT });
      check(snapshots === 2, `the snapshot was retried (${snapshots} requests)`);
      const shown = await page.evaluate(() => window.__indicator);
      check(shown.includes('Reconnecting…') && shown[shown.length - 1] === 'Live', `indicator: ${shown}`);
      await page.close();
    }),

    scenario('dashboard: an expired token says so and asks for a new one', async () => {
      const page = await newPage();
      await page.goto(`${base}/?access_token=${await token('expiry', 1)}`);
      await until(page, 'the indicator says Disconnected', () => document.getElementById('indicator-text').textContent === 'Disconnected');
      const banner = await page.textContent('#banner');
      check(/token expired/.test(banner) && /changecast token --tenant expiry/.test(banner), `banner: ${banner}`);
      check(await page.isVisible('#login'), 'the token form is shown');
      check(await page.evaluate(() => sessionStorage.getItem('changecast-token')) === null, 'the dead token is forgotten');
      await page.fill('#token', await token('expiry'));
      await page.click('#login button');
      await until(page, 'live with the new token', () => document.getElementById('indicator-text').textContent === 'Live');
      check(await page.isHidden('#banner'), 'the banner is gone');
      await page.close();
    }),

    scenario('dashboard: agent heartbeat ages live and stale agents are marked', async () => {
      const tenant = 'agents';
      const page = await dashboard(tenant);
      const fresh = await insertAgent(tenant, 'fresh', '3 seconds');
      const old = await insertAgent(tenant, 'silent', '2 minutes');
      const ageOf = (id) => page.evaluate((i) => document.querySelector(`.agent[data-id="${i}"] .age`)?.textContent, id);
      await page.waitForSelector(`.agent[data-id="${old}"]`, { timeout: TIMEOUT });
      const first = await until(page, 'an age in seconds', (i) => {
        const text = document.querySelector(`.agent[data-id="${i}"] .age`)?.textContent;
        return /^\d+ s ago$/.test(text || '') && text;
      }, fresh);
      const seconds = parseInt(first, 10);
      check(seconds >= 3 && seconds < 10, `the fresh agent's heartbeat: ${first}`);
      await until(page, 'the age grows', ([i, s]) => parseInt(document.querySelector(`.agent[data-id="${i}"] .age`).textContent, 10) > s, [fresh, seconds]);
      check(await page.evaluate((i) => document.querySelector(`.agent[data-id="${i}"]`).classList.contains('stale'), old), 'the silent agent is marked stale');
      check(await page.isVisible(`.agent[data-id="${old}"] .stale-mark`), 'the stale mark is visible');
      check(!(await page.evaluate((i) => document.querySelector(`.agent[data-id="${i}"]`).classList.contains('stale'), fresh)), 'the fresh agent is not stale');
      check((await ageOf(old)) === '2 min ago', `old heartbeat shown as ${await ageOf(old)}`);
      await sql('update agents set last_heartbeat = now() where id::text = $1 returning id', [old]);
      await until(page, 'the agent is no longer stale', (i) => !document.querySelector(`.agent[data-id="${i}"]`).classList.contains('stale'), old);
      await page.close();
    }),

    scenario('dashboard: copy-id puts the id on the clipboard and says Copied!', async () => {
      const tenant = 'copy';
      const page = await dashboard(tenant);
      const [{ id }] = await sql("insert into profiles (tenant_id, name, tag) values ($1, 'Night shift', 'schedule') returning id::text as id", [tenant]);
      const button = `.profile[data-id="${id}"] button.copy`;
      await page.waitForSelector(button, { timeout: TIMEOUT });
      // By keyboard: the button is focusable and named.
      await page.focus(button);
      check(/Night shift/.test(await page.getAttribute(button, 'aria-label')), 'the button names its profile');
      await page.keyboard.press('Enter');
      await until(page, 'the Copied! tooltip', (b) => document.querySelector(`${b} .tooltip`)?.textContent === 'Copied!', button);
      const copied = await page.evaluate(() => navigator.clipboard.readText());
      check(copied === id, `clipboard holds ${copied}`);
      await page.close();
    }),

    scenario('dashboard: pause holds changes back, resume applies them', async () => {
      const tenant = 'pause';
      const page = await dashboard(tenant);
      await page.click('#pause');
      check(await page.getAttribute('#pause', 'aria-pressed') === 'true', 'the toggle says pressed');
      await until(page, 'Paused', () => document.getElementById('indicator-text').textContent === 'Paused');
      const id = await insertTicket(tenant, 'held back');
      await until(page, 'one change waiting', () => document.getElementById('indicator-text').textContent === 'Paused · 1 waiting');
      check(await page.$(`.ticket[data-id="${id}"]`) === null, 'not applied while paused');
      await page.click('#pause');
      await page.waitForSelector(ticketIn('open', id), { timeout: TIMEOUT });
      check(await page.textContent('#indicator-text') === 'Live', 'Live again');
      await page.close();
    }),

    scenario('dashboard: readable at phone width; screenshot of the demo tenant', async () => {
      await rust('demo', { tenant: 'demo', steps: 6 });
      const page = await dashboard('demo');
      await page.waitForSelector('#board .ticket', { timeout: TIMEOUT });
      await rust('demo', { tenant: 'demo', steps: 12 });
      await until(page, 'a few live changes in the log', () => document.querySelectorAll('#log li').length >= 4);
      // Accessible names and landmarks.
      const unnamed = await page.evaluate(() => Array.from(document.querySelectorAll('button')).filter((b) => !(b.getAttribute('aria-label') || b.textContent).trim()).length);
      check(unnamed === 0, `${unnamed} buttons without a name`);
      const labelled = await page.evaluate(() => Array.from(document.querySelectorAll('section')).every((s) => document.getElementById(s.getAttribute('aria-labelledby'))));
      check(labelled, 'every section is labelled by its heading');
      check(await page.getAttribute('#indicator', 'role') === 'status', 'the indicator is a status region');
      if (process.env.CHANGECAST_SCREENSHOT) {
        await page.screenshot({ path: process.env.CHANGECAST_SCREENSHOT, fullPage: true, animations: 'disabled' });
      }
      await page.setViewportSize({ width: 390, height: 844 });
      if (process.env.CHANGECAST_SCREENSHOT) {
        await page.screenshot({ path: process.env.CHANGECAST_SCREENSHOT.replace(/\.png$/, '-phone.png'), animations: 'disabled' });
      }
      const layout = await page.evaluate(() => ({
        page: document.documentElement.scrollWidth,
        card: document.querySelector('#board .ticket').getBoundingClientRect().width,
        font: parseFloat(getComputedStyle(document.querySelector('#board .ticket .title')).fontSize),
      }));
      check(layout.page <= 390, `no sideways scrolling of the page at 390 px (${layout.page} px wide)`);
      check(layout.card >= 250 && layout.font >= 13, `cards readable on a phone: ${JSON.stringify(layout)}`);
      await page.close();
    }),

    optional('client: on(topic) gets publish()ed application events (API.md §8)', async () =>
      (await sql("select to_regprocedure('changecast.publish(text,text,jsonb)') is not null as yes"))[0].yes,
    async () => {
      const tenant = 'apps';
      const page = await harness();
      await page.evaluate((t) => {
        for (const transport of ['sse', 'ws']) {
          window.openClient(transport, { token: t, transport, types: ['ticket'], topics: ['config_update', 'agent:*'] });
          const rec = window.clients[transport].rec;
          rec.config = [];
          rec.agent = [];
          window.clients[transport].cc.on('config_update', (e) => rec.config.push(e));
          window.clients[transport].cc.on('agent:*', (e) => rec.agent.push(e.topic));
        }
      }, await token(tenant));
      await until(page, 'both live', () => window.clients.sse.cc.status === 'live' && window.clients.ws.cc.status === 'live');
      const publish = (topic, payload) => rust('exec', { sql: 'select changecast.publish($1, $2, ($3::text)::jsonb)', params: [tenant, topic, JSON.stringify(payload)] });
      await publish('other_topic', { n: 0 });
      await publish('config_update', { action: 'profile_set_default', profile_ids: ['p1'] });
      await publish('agent:stats', { tasks_done: 3 });
      const marker = await insertTicket(tenant, 'after the events');
      for (const transport of ['sse', 'ws']) {
        await until(page, `${transport}: the ticket after the events`, ([n, id]) => window.got(n).includes(id), [transport, marker]);
        const rec = await page.evaluate((n) => {
          const r = window.clients[n].rec;
          return { config: r.config, agent: r.agent, events: r.events.map((e) => e.topic) };
        }, transport);
        check(rec.config.length === 1 && rec.config[0].payload.action === 'profile_set_default' && rec.config[0].type === 'app_event',
          `${transport}: on('config_update'): ${JSON.stringify(rec.config)}`);
        check(rec.agent.join() === 'agent:stats', `${transport}: on('agent:*'): ${rec.agent}`);
        check(rec.events.join() === 'config_update,agent:stats', `${transport}: on('event') got only the selected topics: ${rec.events}`);
      }
      await page.close();
    }),

    optional('client: row filters, and rows leaving the view arrive as deleted (API.md §9)', async () =>
      (await fetch(`${base}/v1/snapshot?filter=nonsense`, { headers: { Authorization: `Bearer ${await token('probe')}` } })).status === 400,
    async () => {
      const tenant = 'filters';
      const page = await harness();
      await page.evaluate((t) => {
        for (const transport of ['sse', 'ws']) window.openClient(transport, { token: t, transport, types: ['ticket'], filter: { state: 'eq.open' } });
      }, await token(tenant));
      await until(page, 'both live', () => window.clients.sse.cc.status === 'live' && window.clients.ws.cc.status === 'live');
      const open = await insertTicket(tenant, 'open', 'open');
      const closed = await insertTicket(tenant, 'closed from the start', 'closed');
      await sql("update tickets set state = 'closed' where id::text = $1 returning id", [open]);
      const marker = await insertTicket(tenant, 'marker', 'open');
      for (const transport of ['sse', 'ws']) {
        await until(page, `${transport}: the marker`, ([n, id]) => window.got(n).includes(id), [transport, marker]);
        const seen = await page.evaluate((n) => window.clients[n].rec.changes.map((c) => `${c.event}:${c.resource.id}`), transport);
        check(JSON.stringify(seen) === JSON.stringify([`created:${open}`, `deleted:${open}`, `created:${marker}`]),
          `${transport}: ${JSON.stringify(seen)} (closed one: ${closed})`);
      }
      await page.close();
    }),

    scenario('typescript: the .d.ts type-checks the examples with tsc --strict', async () => {
      const { code, output } = await typechecked;
      check(code === 0, `tsc: ${output.replace(/\s+/g, ' ').slice(0, 600)}`);
    }),
  ]);

  // Last: it restarts the service under every page still open.
  const main = await newPage();
  await scenario('dashboard: snapshot, ticket moves between state columns, deletes', async () => {
    const tenant = 'acme';
    await insertTicket(tenant, 'from the snapshot');
    await insertTicket('globex', 'never shown');
    await dashboard(tenant, main);
    check(await main.locator('#board .ticket').count() === 1, "only acme's ticket is shown");
    check(await main.evaluate(() => window.changecastDashboard.client.connectedVia) === 'ws', 'the dashboard streams over WebSocket');
    check(await main.textContent('#via') === 'WebSocket', 'and says so');
    check(!main.url().includes('access_token'), `the token stays out of the address bar: ${main.url()}`);
    const id = await insertTicket(tenant, 'created live');
    await main.waitForSelector(ticketIn('open', id), { timeout: TIMEOUT });
    await sql("update tickets set state = 'in_progress', updated_at = now() where id::text = $1 returning id", [id]);
    await main.waitForSelector(ticketIn('in_progress', id), { timeout: TIMEOUT });
    check(await main.$(ticketIn('open', id)) === null, 'it left the open column');
    await sql("update tickets set state = 'qa', updated_at = now() where id::text = $1 returning id", [id]);
    await main.waitForSelector(ticketIn('qa', id), { timeout: TIMEOUT });
    await sql('delete from tickets where id::text = $1 returning id', [id]);
    await main.waitForSelector(`.ticket[data-id="${id}"]`, { state: 'detached', timeout: TIMEOUT });
  });

  await scenario('dashboard: Reconnecting… and back across a service restart, nothing lost', async () => {
    const tenant = 'acme';
    // The listener's connection dies; a change written meanwhile still arrives.
    await rust('kill_listener');
    const during = await insertTicket(tenant, 'written while the listener reconnects');
    await main.waitForSelector(`.ticket[data-id="${during}"]`, { timeout: TIMEOUT });
    await main.evaluate(() => { window.__indicator = []; });
    const [{ id: whileDown }] = await rust('restart', {
      sql: "insert into tickets (tenant_id, title, updated_at) values ('acme', 'written while the service is down', now()) returning id::text as id",
    });
    await main.waitForSelector(`.ticket[data-id="${whileDown}"]`, { timeout: TIMEOUT });
    await until(main, 'Live again', () => document.getElementById('indicator-text').textContent === 'Live');
    const shown = await main.evaluate(() => window.__indicator);
    check(shown.includes('Reconnecting…'), `the indicator said Reconnecting…: ${shown}`);
    const after = await insertTicket(tenant, 'after the restart');
    await main.waitForSelector(`.ticket[data-id="${after}"]`, { timeout: TIMEOUT });
    const inDb = (await sql("select id::text as id from tickets where tenant_id = 'acme'")).map((r) => r.id).sort();
    const onPage = (await main.evaluate(() => Array.from(document.querySelectorAll('#board .ticket')).map((t) => t.dataset.id))).sort();
    check(JSON.stringify(inDb) === JSON.stringify(onPage), `page and database agree: ${onPage.length} vs ${inDb.length}`);
    const last = await main.textContent('#last-change');
    check(/^Last change \d/.test(last), `time of the last change shown: ${last}`);
  });
  await browser.close();
} catch (error) {
  out(`FAIL suite: ${String(error && error.stack || error).split('\n').slice(0, 3).join(' | ')}`);
  await browser.close().catch(() => {});
}
out('DONE');
process.exit(0);
