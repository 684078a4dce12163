// syncQueries against a real QueryClient (@tanstack/query-core), fed the events a
// changecast client emits.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';
import { QueryClient } from '@tanstack/query-core';
import { patchList, syncQueries } from '@changecast/tanstack-query';

const require = createRequire(import.meta.url);

/** What syncQueries needs of a client: on(name, fn) returning the unsubscribe. */
function emitter() {
  const handlers = new Map();
  return {
    on(name, fn) {
      handlers.set(name, [...(handlers.get(name) || []), fn]);
      return () => handlers.set(name, handlers.get(name).filter((f) => f !== fn));
    },
    emit(name, value) {
      for (const fn of handlers.get(name) || []) fn(value);
    },
  };
}

const change = (event, type, id, resource = { id, title: `t${id}` }) => ({
  type: 'resource_change', id: `c-${type}-${id}-${event}`, event, resource_type: type, tenant_id: 'acme',
  resource_id: String(id), resource, occurred_at: '2026-01-01T00:00:00Z',
});

async function cached(keys) {
  const queries = new QueryClient();
  for (const [key, data] of keys) await queries.prefetchQuery({ queryKey: key, queryFn: () => Promise.resolve(data) });
  return queries;
}
const invalid = (queries, key) => queries.getQueryState(key).isInvalidated;

test('invalidate mode: the changed row and its list, nothing else', async () => {
  const queries = await cached([[['tickets'], []], [['ticket', '1'], { id: '1' }], [['ticket', '2'], { id: '2' }], [['agents'], []]]);
  const cc = emitter();
  const stop = syncQueries(queries, cc, { ticket: { list: ['tickets'], detail: (id) => ['ticket', id] } });
  cc.emit('change', change('updated', 'ticket', '1'));
  assert.ok(invalid(queries, ['tickets']));
  assert.ok(invalid(queries, ['ticket', '1']));
  assert.ok(!invalid(queries, ['ticket', '2']));
  assert.ok(!invalid(queries, ['agents']));
  cc.emit('change', change('created', 'unmapped', '5'));
  stop();
  cc.emit('change', change('updated', 'ticket', '2'));
  assert.ok(!invalid(queries, ['ticket', '2']), 'still syncing after stop()');
});

test('patch mode writes rows into the cache; deleted removes them', async () => {
  const queries = await cached([[['agents'], [{ id: 'a1', name: 'one' }]], [['agent', 'a1'], { id: 'a1', name: 'one' }]]);
  const cc = emitter();
  syncQueries(queries, cc, { agent: { list: ['agents'], detail: (id) => ['agent', id], mode: 'patch' } });
  cc.emit('change', change('created', 'agent', 'a2', { id: 'a2', name: 'two' }));
  cc.emit('change', change('updated', 'agent', 'a1', { id: 'a1', name: 'uno' }));
  assert.deepEqual(queries.getQueryData(['agents']), [{ id: 'a1', name: 'uno' }, { id: 'a2', name: 'two' }]);
  assert.deepEqual(queries.getQueryData(['agent', 'a1']), { id: 'a1', name: 'uno' });
  assert.ok(!invalid(queries, ['agents']), 'patched, not refetched');
  cc.emit('change', change('deleted', 'agent', 'a1', { id: 'a1' }));
  assert.deepEqual(queries.getQueryData(['agents']), [{ id: 'a2', name: 'two' }]);
  assert.equal(queries.getQueryState(['agent', 'a1']), undefined, 'the deleted row\'s query is gone');
});

test('a resync invalidates every mapped list and row query', async () => {
  const queries = await cached([[['tickets'], []], [['ticket', '1'], {}], [['agents'], []], [['other'], 1]]);
  const cc = emitter();
  syncQueries(queries, cc, { ticket: { list: ['tickets'], detail: (id) => ['ticket', id] }, agent: { list: ['agents'], mode: 'patch' } });
  cc.emit('resync', { type: 'resync', reason: 'cursor_expired' });
  for (const key of [['tickets'], ['ticket', '1'], ['agents']]) assert.ok(invalid(queries, key), JSON.stringify(key));
  assert.ok(!invalid(queries, ['other']));
});

test('patchList leaves an unloaded list alone and keeps unchanged lists identical', () => {
  assert.equal(patchList(undefined, change('created', 'ticket', '1')), undefined);
  const rows = [{ id: '1' }];
  assert.equal(patchList(rows, change('deleted', 'ticket', '9')), rows);
});

test('the CommonJS build exports the same', () => {
  const cjs = require('@changecast/tanstack-query');
  assert.equal(typeof cjs.syncQueries, 'function');
  assert.equal(typeof cjs.patchList, 'function');
});
