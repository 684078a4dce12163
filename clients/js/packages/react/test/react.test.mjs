// The React package in Node: its live list (what useLiveSnapshot keeps) and both builds.
// The hooks themselves render in Chromium (tests/browser, run by tests/it/browser.rs).
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';
import { LiveList, useChangecast, useLiveSnapshot } from '@changecast/react';

const require = createRequire(import.meta.url);

const snapshot = (rows, cursor = 'c0') => ({ cursor, resources: { ticket: rows, agent: [{ id: 'a1' }] }, truncated: false });
const change = (event, id, resource = { id, title: `t${id}` }, type = 'ticket') => ({
  type: 'resource_change', id: `cursor-${id}-${event}`, event, resource_type: type, tenant_id: 'acme',
  resource_id: String(id), resource, occurred_at: '2026-01-01T00:00:00Z',
});

test('LiveList: a snapshot, then created / updated / deleted applied by resource id', () => {
  const list = new LiveList('ticket');
  assert.deepEqual(list.list, []);
  const first = list.reset(snapshot([{ id: 1, title: 'a' }, { id: 2, title: 'b' }]));
  assert.deepEqual(first.map((r) => r.title), ['a', 'b']);
  const created = list.apply(change('created', 3));
  assert.deepEqual(created.map((r) => r.title), ['a', 'b', 't3']);
  assert.notEqual(created, first, 'a new array for React');
  const updated = list.apply(change('updated', 1, { id: 1, title: 'a, renamed' }));
  assert.deepEqual(updated.map((r) => r.title), ['a, renamed', 'b', 't3'], 'updated in place');
  const deleted = list.apply(change('deleted', 2, { id: 2 }));
  assert.deepEqual(deleted.map((r) => r.id), [1, 3]);
  assert.equal(list.apply(change('created', 9, { id: 9 }, 'agent')), deleted, 'another type changes nothing');
  assert.equal(list.apply(change('deleted', 42, { id: 42 })), deleted, 'deleting an unknown row changes nothing');
  // A repeated created (a resume may repeat a few) does not add the row twice.
  assert.equal(list.apply(change('created', 3)).length, 2);
  // A resync's new snapshot starts over.
  assert.deepEqual(list.reset(snapshot([{ id: 7, title: 'x' }], 'c9')).map((r) => r.id), [7]);
  assert.deepEqual(list.reset({ cursor: 'c', resources: {}, truncated: false }), []);
});

test('LiveList: rows whose id column is not `id`', () => {
  const list = new LiveList('agent', (row) => String(row.agent_key));
  list.reset({ cursor: 'c', resources: { agent: [{ agent_key: 'k1', name: 'one' }] }, truncated: false });
  const next = list.apply(change('updated', 'k1', { agent_key: 'k1', name: 'uno' }, 'agent'));
  assert.deepEqual(next, [{ agent_key: 'k1', name: 'uno' }]);
});

test('the ESM and CommonJS builds export the hooks', () => {
  const cjs = require('@changecast/react');
  for (const exports of [{ LiveList, useChangecast, useLiveSnapshot }, cjs]) {
    assert.equal(typeof exports.useChangecast, 'function');
    assert.equal(typeof exports.useLiveSnapshot, 'function');
    assert.equal(typeof exports.LiveList, 'function');
  }
});
